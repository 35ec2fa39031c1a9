"""Request payloads -> model inputs, and the embedding encodings (no ONNX, no torch)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from sculptserve.bundle.schema import InputSpec
from sculptserve.serving.encodings import (
    ENCODINGS,
    decode_embeddings,
    encode_embeddings,
    get_encoding,
    images_to_png,
    images_to_png_b64,
    png_max_bytes,
)
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.inputs import (
    accepted_layouts,
    check_model_input,
    decode_inputs,
    parse_fixed_dims,
)
from sculptserve.stats.priors import prior_from_dict

H, W = 4, 5  # not square, so a transposed image cannot pass for the right one


def image_spec(channels: int = 1, scale: float = 1.0) -> InputSpec:
    return InputSpec(
        modality="image",
        shape=[channels, H, W],
        layout="NCHW",
        color={1: "L", 3: "RGB"}[channels],
        value_range=[0.0, 1.0],
        normalization={"shift": 0.0, "scale": scale},
    )


def tabular_spec(shift: list[float], scale: list[float]) -> InputSpec:
    return InputSpec(
        modality="tabular",
        shape=[len(shift)],
        layout="NF",
        normalization={"shift": shift, "scale": scale},
    )


def pixels(channels: int, seed: int = 0) -> np.ndarray:
    """(C, H, W) uint8 test image."""
    return np.random.default_rng(seed).integers(0, 256, size=(channels, H, W), dtype=np.uint8)


def png_b64(px: np.ndarray, fmt: str = "PNG") -> str:
    plane = px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def raw_item(arr: np.ndarray, **extra) -> dict:
    data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    return {"b64": base64.b64encode(data).decode(), "dtype": "float32", "shape": list(arr.shape)}


# ---------------------------------------------------------------------------------------------
# Forms agree
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_every_form_gives_the_same_model_input(channels):
    px = pixels(channels)
    unit = px.astype(np.float32) / 255  # model space: value_range [0, 1]
    items = [
        unit.tolist(),  # channel-first nested list
        unit.transpose(1, 2, 0).tolist(),  # channel-last nested list
        png_b64(px),
        "data:image/png;base64," + png_b64(px),
        base64.b64decode(png_b64(px)),  # file bytes (multipart / gRPC)
        raw_item(unit),
        raw_item(unit.transpose(1, 2, 0)),
    ]
    if channels == 1:
        items.append(unit[0].tolist())  # (H, W) for gray
    x = decode_inputs(items, image_spec(channels), max_items=16)
    assert x.dtype == np.float32 and x.shape == (len(items), channels, H, W)
    for i in range(len(items)):
        np.testing.assert_allclose(x[i], unit, atol=1e-6, err_msg=f"item {i}")


def test_raw_values_get_the_normalization_and_pixels_map_to_value_range():
    # an "x / 255" bundle: raw values are 0..255, a PNG gives the same model input
    px = pixels(1, seed=3)
    x = decode_inputs(
        [px.astype(float).tolist(), png_b64(px)], image_spec(1, scale=255.0), max_items=4
    )
    np.testing.assert_allclose(x[0], px / 255, atol=1e-6)
    np.testing.assert_allclose(x[1], px / 255, atol=1e-6)
    # normalize=False: nested lists are already model space
    y = decode_inputs(
        [px.astype(float).tolist()], image_spec(1, 255.0), max_items=4, normalize=False
    )
    np.testing.assert_allclose(y[0], px, atol=1e-6)


def test_rgba_and_jpeg_convert_to_the_model_channels():
    px = pixels(3, seed=1)
    rgba = np.concatenate([px, np.full((1, H, W), 7, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba.transpose(1, 2, 0)).save(buf, format="PNG")
    x = decode_inputs([base64.b64encode(buf.getvalue()).decode()], image_spec(3), max_items=1)
    np.testing.assert_allclose(x[0], px / 255, atol=1e-6)  # alpha dropped
    # an RGB JPEG into a gray model: converted to L (lossy, so only close)
    gray = decode_inputs([png_b64(px, "JPEG")], image_spec(1), max_items=1)
    expected = np.asarray(Image.fromarray(px.transpose(1, 2, 0)).convert("L")) / 255
    assert np.abs(gray[0, 0] - expected).mean() < 0.08


def test_tabular_per_column_normalization():
    spec = tabular_spec(shift=[1.0, -2.0, 10.0], scale=[2.0, 0.5, 4.0])
    rows = np.array([[3.0, -1.0, 18.0], [1.0, -2.0, 10.0]])
    x = decode_inputs([rows[0].tolist(), raw_item(rows[1])], spec, max_items=8)
    np.testing.assert_allclose(x, [[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], atol=1e-6)
    assert accepted_layouts(spec) == [[3]]
    assert accepted_layouts(image_spec(1)) == [[1, H, W], [H, W], [H, W, 1]]


def test_malformed_bundle_normalization_is_not_a_client_error():
    spec = tabular_spec(shift=[0.0, 0.0], scale=[1.0, 0.0])
    with pytest.raises(ValueError, match="scale must be finite and > 0") as info:
        decode_inputs([[1.0, 2.0]], spec, max_items=1)
    assert not isinstance(info.value, PayloadError)


# ---------------------------------------------------------------------------------------------
# Bad inputs: every one is a PayloadError naming the item
# ---------------------------------------------------------------------------------------------

GOOD = np.zeros((1, H, W)).tolist()
BAD_RAW = raw_item(np.zeros((1, H, W)))


def _with(**changes) -> dict:
    return {**BAD_RAW, **changes}


BAD_ITEMS = {
    "wrong shape": (np.zeros((1, W, H)).tolist(), r"shape \[1, 5, 4\], expected \[1, 4, 5\]"),
    "3 channels into gray": (np.zeros((3, H, W)).tolist(), r"shape \[3, 4, 5\]"),
    "ragged": ([[0.0] * W] * (H - 1) + [[0.0] * (W - 1)], "ragged"),
    "nan": (np.full((1, H, W), np.nan).tolist(), r"NaN at index \[0, 0, 0\]"),
    "inf": ([[[0.0] * W] * (H - 1) + [[0.0] * (W - 1) + [float("inf")]]], r"Inf at index"),
    "overflow to float32 inf": (np.full((1, H, W), 1e39).tolist(), "Inf"),
    "strings in list": ([["a"] * W] * H, "holds strings"),
    "null in list": ([[None] * W] * H, "non-numbers"),
    "booleans": ([[True] * W] * H, "booleans"),
    "number": (3.0, "got float"),
    "undecodable base64": ("not base64 !!", "not valid base64"),
    "not an image": (base64.b64encode(b"hello world").decode(), "cannot decode the image"),
    "truncated png": (png_b64(pixels(1))[:60], "cannot decode the image"),
    "wrong image size": (
        base64.b64encode(
            (lambda b: (Image.new("L", (W + 1, H)).save(b, format="PNG"), b.getvalue())[1])(
                io.BytesIO()
            )
        ).decode(),
        r"image is 6x4 .* takes 5x4",
    ),
    "raw bytes length": (_with(b64=base64.b64encode(b"\0" * 12).decode()), "holds 12 bytes"),
    "raw bad dtype": (_with(dtype="float64"), "dtype 'float64' is not supported"),
    "raw bad shape": (_with(shape=[2, H, W]), r"raw array has shape \[2, 4, 5\]"),
    "raw shape not ints": (_with(shape=["1", H, W]), "positive integers"),
    "raw missing b64": ({"shape": [1, H, W]}, "needs keys 'b64' and 'shape'"),
    "raw unknown key": (_with(extra=1), "got keys"),
    "raw nan": (raw_item(np.full((1, H, W), np.nan)), "NaN"),
    "raw b64 not a string": (_with(b64=123), "must be a base64 string"),
}


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_bad_item_is_a_payload_error_naming_the_item(case):
    bad, pattern = BAD_ITEMS[case]
    with pytest.raises(PayloadError, match=pattern) as info:
        decode_inputs([GOOD, GOOD, bad], image_spec(1), max_items=8)
    assert str(info.value).startswith("item 2: "), str(info.value)


def test_bad_batches():
    with pytest.raises(PayloadError, match="empty"):
        decode_inputs([], image_spec(1), max_items=8)
    with pytest.raises(PayloadError, match="too many items: 9, at most 8"):
        decode_inputs([GOOD] * 9, image_spec(1), max_items=8)
    with pytest.raises(PayloadError, match="must be a list"):
        decode_inputs("abc", image_spec(1), max_items=8)
    with pytest.raises(PayloadError, match="3 items hold NaN/Inf in all"):
        decode_inputs([np.full((1, H, W), np.nan).tolist()] * 3, image_spec(1), max_items=8)


def test_strings_are_rejected_for_tabular_and_two_channel_models():
    with pytest.raises(PayloadError, match=r"item 0: a string item .* only image models"):
        decode_inputs([png_b64(pixels(1))], tabular_spec([0.0] * 3, [1.0] * 3), max_items=1)
    two = InputSpec(
        modality="image", shape=[2, H, W], layout="NCHW", normalization={"shift": 0, "scale": 1}
    )
    with pytest.raises(PayloadError, match="2-channel inputs, which PNG/JPEG cannot carry"):
        decode_inputs([png_b64(pixels(1))], two, max_items=1)


# ---------------------------------------------------------------------------------------------
# Image bombs: refused from the header, never decoded
# ---------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, *, channels: int = 4, ancillary: bytes = b"") -> bytes:
    """A valid 8-bit PNG of zeros (gray, RGB or RGBA), built chunk by chunk so that no image of
    its size is ever held in memory: a 13000 x 13000 RGBA bomb is 657 KB and decodes to 676 MB.
    ``ancillary``: chunks placed before the pixel data."""
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    deflate = zlib.compressobj(9)
    rows = bytes(1 + width * channels) * 100  # a filter byte + the row, 100 rows per call
    idat = b"".join(deflate.compress(rows) for _ in range(height // 100))
    idat += deflate.compress(bytes(1 + width * channels) * (height % 100)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", ihdr),
            ancillary,
            _png_chunk(b"IDAT", idat),
            _png_chunk(b"IEND", b""),
        ]
    )


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """The reproducer of issue 13, finding 1: 13000 x 13000 RGBA in 657 KB."""
    return png_file(13000, 13000)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the images Pillow decodes (every PNG/JPEG pixel decode goes through
    ``ImageFile.load``), recorded while the test runs."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return sizes


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_png_bomb_is_refused_from_its_header_without_decoding(png_bomb, decoded):
    assert len(png_bomb) < 700_000
    pattern = r"^item 0: image is 13000x13000 \(width x height\) but the model takes 5x4"
    for item in (png_bomb, base64.b64encode(png_bomb).decode()):  # gRPC/multipart, JSON
        with pytest.raises(PayloadError, match=pattern):
            decode_inputs([item, GOOD], image_spec(1), max_items=8)
    assert decoded == []  # not a pixel decoded (it used to be decoded in full: 5 s, +640 MB)
    # the spy does see decoding: an image of the model's size is decoded, as it must be
    decode_inputs([png_file(W, H, channels=1)], image_spec(1), max_items=1)
    assert decoded and set(decoded) == {(W, H)}


def _exif_png(width: int, height: int, orientation: int | None) -> bytes:
    img = Image.fromarray(np.arange(width * height, dtype=np.uint8).reshape(height, width))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    return buf.getvalue()


def test_exif_orientation_is_applied_after_the_header_size_check(decoded):
    # stored H x W, rotated upright by orientation 6: accepted, and turned the right way
    x = decode_inputs([_exif_png(H, W, 6)], image_spec(1), max_items=1)
    stored = np.arange(H * W, dtype=np.uint8).reshape(W, H)
    np.testing.assert_allclose(x[0, 0], np.rot90(stored, -1) / 255, atol=1e-6)
    # stored H x W without an orientation, or W x H rotated by one: the wrong size after all
    for width, height, orientation in ((H, W, None), (W, H, 6)):
        with pytest.raises(PayloadError, match=r"image is 4x5 .* takes 5x4"):
            decode_inputs([_exif_png(width, height, orientation)], image_spec(1), max_items=1)
    # any other size is refused before its EXIF is read: nothing of it is decoded
    decoded.clear()
    with pytest.raises(PayloadError, match=r"image is 50x40 .* takes 5x4"):
        decode_inputs([_exif_png(50, 40, 6)], image_spec(1), max_items=1)
    assert decoded == []


def test_png_text_bomb_is_refused():
    # 60 zTXt chunks of 1 MB of text each in 63 KB: Pillow's own limit let it hold 60 MB
    text = zlib.compress(b"a" * (2**20 - 100), 9)
    chunks = b"".join(_png_chunk(b"zTXt", b"k%d\x00\x00" % i + text) for i in range(60))
    bomb = png_file(W, H, channels=1, ancillary=chunks)
    assert len(bomb) < 70_000
    with pytest.raises(PayloadError, match=r"item 0: cannot decode the image .*text chunks"):
        decode_inputs([bomb], image_spec(1), max_items=1)
    # a little metadata is fine
    small = png_file(W, H, channels=1, ancillary=_png_chunk(b"tEXt", b"Comment\x00hello"))
    decode_inputs([small], image_spec(1), max_items=1)


def test_image_over_pillows_pixel_limit_is_a_size_error(decoded):
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
    header_only = b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IEND", b"")
    with pytest.raises(PayloadError, match=r"item 0: .*decompression-bomb limit .* takes 5x4"):
        decode_inputs([header_only], image_spec(1), max_items=1)
    assert decoded == []


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 4, 5), (3, 64, 64), (1, 200, 300), (3, 1, 5000)])
def test_png_max_bytes_bounds_every_png(shape):
    # noise does not compress: the worst case for the bound
    x = np.random.default_rng(0).random((2, *shape))
    sizes = [len(b) for b in images_to_png(x)]
    bound = png_max_bytes(shape)
    assert max(sizes) <= bound
    assert bound <= 1.01 * min(sizes) + 64  # tight enough to size responses by


def test_check_model_input():
    x = check_model_input(np.ones((2, 3), dtype=np.float64), (3,))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    cases = [
        (np.ones(3), "without a batch axis"),
        (np.ones((2, 4)), r"shape \[2, 4\], expected \(B, 3\)"),
        (np.ones((0, 3)), "empty"),
        (np.array([[1, 2, np.nan], [1, 2, 3]]), r"input item 0: holds NaN at index \[2\]"),
        (np.array([["a", "b", "c"]]), "real numbers"),
        (np.ones((1, 3), dtype=bool), "real numbers"),
    ]
    for arr, pattern in cases:
        with pytest.raises(PayloadError, match=pattern):
            check_model_input(arr, (3,))


def test_parse_fixed_dims():
    assert parse_fixed_dims(None, 3) == {}
    assert parse_fixed_dims({0: 1, "2": -0.5}, 3) == {0: 1.0, 2: -0.5}
    bad = [
        ({3: 0.0}, "not an index in 0..2"),
        ({-1: 0.0}, "not an index"),
        ({"x": 0.0}, "not an index"),
        ({True: 0.0}, "not an index"),
        ({0: float("nan")}, "finite number"),
        ({0: "1"}, "finite number"),
        ({0: 1e39}, "finite number"),
        ({0: 1.0, "0": 2.0}, "given twice"),
        ([1, 2], "must be an object"),
    ]
    for fixed, pattern in bad:
        with pytest.raises(PayloadError, match=pattern):
            parse_fixed_dims(fixed, 3)


def test_png_output_round_trips_through_decode_inputs():
    x = np.random.default_rng(0).random((3, 3, H, W)).astype(np.float32)
    pngs = images_to_png_b64(x)
    back = decode_inputs(pngs, image_spec(3), max_items=3)
    assert np.abs(back - x).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    img = Image.open(io.BytesIO(base64.b64decode(pngs[0])))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (W, H)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        images_to_png_b64(np.zeros((1, 2, H, W)))


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------

PRIORS = {
    "gaussian": {"kind": "gaussian", "dim": 4},
    "uniform": {"kind": "uniform", "dim": 4, "low": -5.0, "high": 5.0},
}


def _round_trip(prior, name, n=20_000, seed=0):
    z = prior.sample(n, np.random.default_rng(seed)).astype(np.float32)
    codes = encode_embeddings(z, prior, name)
    return z, codes, decode_embeddings(codes, prior, name)


@pytest.mark.parametrize("prior_name", sorted(PRIORS))
def test_round_trip_errors_are_ordered(prior_name):
    prior = prior_from_dict(PRIORS[prior_name])
    err = {}
    for name in ENCODINGS:
        z, codes, back = _round_trip(prior, name)
        assert back.dtype == np.float32 and back.shape == z.shape
        assert codes.dtype == ENCODINGS[name].dtype
        err[name] = float(np.abs(back - z).mean())
    assert err["float32"] == 0.0
    assert 0.0 < err["float16"] < 1e-3
    assert err["float16"] < err["uint8"] == err["int8"]
    if prior_name == "uniform":  # equal bins of width 10/256: error at most half a bin
        _, _, back = _round_trip(prior, "uint8")
        z = prior.sample(20_000, np.random.default_rng(0)).astype(np.float32)
        assert np.abs(back - z).max() <= 10 / 256 / 2 + 1e-5
        assert err["uint8"] == pytest.approx(10 / 256 / 4, rel=0.02)  # mean |error| = bin / 4


def test_int8_and_uint8_codes():
    prior = prior_from_dict(PRIORS["gaussian"])
    z = prior.sample(50_000, np.random.default_rng(1))
    u8 = encode_embeddings(z, prior, "uint8")
    i8 = encode_embeddings(z, prior, "int8")
    assert u8.dtype == np.uint8 and i8.dtype == np.int8
    np.testing.assert_array_equal(i8.astype(np.int16), u8.astype(np.int16) - 128)
    np.testing.assert_array_equal(
        decode_embeddings(u8, prior, "uint8"), decode_embeddings(i8, prior, "int8")
    )
    # latents from the prior use every code about equally often (maximum-entropy code)
    counts = np.bincount(u8.ravel(), minlength=256)
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
    # extreme latents saturate at the end codes instead of wrapping around
    ext = encode_embeddings(np.array([[-50.0, 50.0, 0.0, 0.0]]), prior, "uint8")
    assert ext[0, 0] == 0 and ext[0, 1] == 255
    # JSON lists decode too
    np.testing.assert_array_equal(
        decode_embeddings(i8.tolist(), prior, "int8"), decode_embeddings(i8, prior, "int8")
    )


def test_float16_saturates():
    prior = prior_from_dict({"kind": "gaussian", "dim": 2})
    codes = encode_embeddings(np.array([[1e6, -1e6]], dtype=np.float32), prior, "float16")
    assert np.isfinite(codes).all() and codes[0, 0] == np.finfo(np.float16).max


def test_encoding_errors():
    prior = prior_from_dict(PRIORS["gaussian"])
    with pytest.raises(PayloadError, match="unknown encoding 'bf16'; valid encodings: float32"):
        get_encoding("bf16")
    with pytest.raises(PayloadError, match="unknown encoding"):
        encode_embeddings(np.zeros((1, 4)), prior, "int4")
    bad_codes = [
        ("uint8", [[0, 1, 2, 256]], "0..255"),
        ("int8", [[0, 1, 2, -129]], "-128..127"),
        ("uint8", [[0, 1, 2, 1.5]], "integers"),
        ("uint8", [[0, 1, 2]], r"shape \[1, 3\], expected \(n >= 1, 4\)"),
        ("float32", [[0, 1, 2, float("nan")]], "finite"),
        ("float16", [["a", "b", "c", "d"]], "numbers"),
        ("uint8", [[0, 1], [2, 3, 4]], "ragged"),
    ]
    for name, codes, pattern in bad_codes:
        with pytest.raises(PayloadError, match=pattern):
            decode_embeddings(codes, prior, name)
    with pytest.raises(ValueError, match="finite"):
        encode_embeddings(np.full((1, 4), np.nan), prior, "uint8")


def test_gaussian_latent_mse_per_encoding(capsys):
    """The numbers the docs quote: mean squared latent error, unit gaussian prior."""
    prior = prior_from_dict({"kind": "gaussian", "dim": 8})
    mse = {}
    for name in ENCODINGS:
        z, _, back = _round_trip(prior, name, n=100_000, seed=7)
        mse[name] = float(np.mean((back.astype(np.float64) - z) ** 2))
    with capsys.disabled():
        print("\nlatent MSE, unit gaussian prior:", {k: f"{v:.3g}" for k, v in mse.items()})
    assert mse["float32"] == 0.0
    assert mse["float16"] < 1e-6
    assert mse["uint8"] == mse["int8"] < 2e-3  # measured ~1e-3, dominated by the clipped tails


def test_raw_items_round_trip_through_decode_inputs():
    from sculptserve.serving.inputs import raw_items

    spec = image_spec(channels=3)
    x = np.random.default_rng(0).random((3, *spec.shape), dtype=np.float32)
    decoded = decode_inputs(raw_items(x), spec, max_items=8, normalize=False)
    np.testing.assert_array_equal(decoded, x)
