"""sculptserve: MMD-sculpted latent spaces, trained with torch and served with ONNX Runtime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sculptserve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
