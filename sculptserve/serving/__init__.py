"""The embedding service: settings, the transport-free core and what it uses, and the
transports that only translate (``http/``: BentoML REST; ``grpc/``: grpc.aio).

Never imports torch (an import-linter contract in pyproject.toml).
"""
