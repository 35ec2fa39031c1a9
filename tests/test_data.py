"""Tests of the dataset layer (training/data): registry, shapes renderer, files, normalization."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from sculptserve.training.data import (
    DATASETS,
    DataError,
    Dataset,
    dataset_from_description,
    load_dataset,
)
from sculptserve.training.data import shapes as S
from sculptserve.training.data.fashion_mnist import DEFAULT_PATH as FASHION_PATH

Image = pytest.importorskip("PIL.Image")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pacsv = pytest.importorskip("pyarrow.csv")

FASHION_PRESENT = (Path(FASHION_PATH) / "train-images-idx3-ubyte.gz").is_file()


def lit(img: np.ndarray) -> int:
    return int(img.sum())


def centroid(img: np.ndarray) -> tuple[float, float]:
    """(x, y) = (column, row) centre of mass of a 2-D mask."""
    rows, cols = np.nonzero(img)
    return float(cols.mean()), float(rows.mean())


def one(shape=0, scale=5, orientation=0, pos_x=16, pos_y=16, size=64) -> np.ndarray:
    return S.render(np.array([[shape, scale, orientation, pos_x, pos_y]]), size)[0, 0]


# ---------------------------------------------------------------- registry and errors


def test_registry_names_and_unknown_name_lists_them():
    assert set(DATASETS) == {"shapes", "fashion-mnist", "digits"}
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "'mnist'" in msg
    assert "digits, fashion-mnist, shapes" in msg
    assert "path" in msg and ".csv" in msg
    assert isinstance(err.value, ValueError)


def test_missing_path_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"no such file or folder: .*nope\.npy"):
        load_dataset(str(tmp_path / "nope.npy"))
    odd = tmp_path / "table.txt"
    odd.write_text("1,2\n")
    with pytest.raises(DataError, match=r"'\.txt'.*\.npy, \.npz, \.csv, \.parquet"):
        load_dataset(str(odd))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"split": "test"}, "unknown split 'test'"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"channels": 2}, "channels must be 1"),
        ({"image_size": 0}, "image_size"),
        ({"data_path": "/tmp"}, "no data path"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        load_dataset("shapes", **kwargs)


# ---------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes_splits() -> tuple[Dataset, Dataset]:
    return load_dataset("shapes", split="train"), load_dataset("shapes", split="val")


def test_shapes_splits_partition_the_index_space(shapes_splits):
    train, val = shapes_splits
    assert S.N_IMAGES == 737_280 == 3 * 6 * 40 * 32 * 32
    assert len(train) + len(val) == S.N_IMAGES
    assert len(val) == round(0.1 * S.N_IMAGES)
    both = np.concatenate([train.rows, val.rows])
    assert np.array_equal(np.sort(both), np.arange(S.N_IMAGES))  # disjoint and complete
    other = load_dataset("shapes", split="val", seed=1)
    assert not np.array_equal(other.rows, val.rows)
    assert np.array_equal(load_dataset("shapes", split="val").rows, val.rows)


def test_shapes_mixed_radix_round_trip(shapes_splits):
    assert np.array_equal(S.index_to_factors(0), [[0, 0, 0, 0, 0]])
    assert np.array_equal(S.index_to_factors(1), [[0, 0, 0, 0, 1]])  # posY fastest
    assert np.array_equal(S.index_to_factors(32), [[0, 0, 0, 1, 0]])
    assert np.array_equal(S.index_to_factors(32 * 32 * 40 * 6), [[1, 0, 0, 0, 0]])  # shape slowest
    assert np.array_equal(S.index_to_factors(S.N_IMAGES - 1), [[2, 5, 39, 31, 31]])
    idx = np.random.default_rng(0).integers(0, S.N_IMAGES, 5000)
    factors = S.index_to_factors(idx)
    assert np.array_equal(S.factors_to_index(factors), idx)
    assert (factors >= 0).all() and (factors < np.array(S.FACTOR_SIZES)).all()
    with pytest.raises(IndexError):
        S.index_to_factors(S.N_IMAGES)
    train, _ = shapes_splits
    pos = np.array([0, 7, len(train) - 1])
    assert np.array_equal(train.get_factors(pos), S.index_to_factors(train.rows[pos]))
    assert np.array_equal(train.factors[pos], train.get_factors(pos))
    assert train.factor_names == ["shape", "scale", "orientation", "posX", "posY"]
    assert train.factor_sizes == [3, 6, 40, 32, 32]


def test_shapes_batch_dtype_shape_range_and_determinism(shapes_splits):
    train, _ = shapes_splits
    idx = np.array([5, 0, 123_456, len(train) - 1])
    batch = train.get_batch(idx)
    assert batch.dtype == np.float32 and batch.shape == (4, 1, 64, 64)
    assert set(np.unique(batch)) == {0.0, 1.0}
    assert train.input_shape == (1, 64, 64) and train.modality == "image"
    assert np.array_equal(batch, load_dataset("shapes").get_batch(idx))
    # A batch equals its images rendered one at a time (chunking and grouping change nothing).
    singles = np.concatenate([train.get_batch([i]) for i in idx])
    assert np.array_equal(batch, singles)
    big = S.index_to_factors(np.arange(0, S.N_IMAGES, 577))  # > one render chunk
    assert np.array_equal(S.render(big)[-3:], S.render(big[-3:]))


def test_shapes_differ_by_shape_only():
    images = [one(shape=k, orientation=3) for k in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert (images[a] != images[b]).sum() > 10


@pytest.mark.parametrize("shape", range(3))
def test_shapes_scale_increases_lit_pixels(shape):
    counts = [lit(one(shape=shape, scale=s, orientation=7)) for s in range(6)]
    assert all(b > a for a, b in itertools.pairwise(counts)), counts
    # Area grows like scale^2: from 0.5 to 1.0 about 4x.
    assert 3.0 < counts[-1] / counts[0] < 5.0


@pytest.mark.parametrize("shape", range(3))
def test_shapes_position_moves_centroid(shape):
    xs, ys = zip(
        *(centroid(one(shape=shape, pos_x=p, orientation=11)) for p in range(32)), strict=True
    )
    assert all(b > a for a, b in itertools.pairwise(xs)), xs
    assert np.ptp(ys) < 0.5  # posX does not move the shape vertically
    ys = [centroid(one(shape=shape, pos_y=p, orientation=11))[1] for p in range(32)]
    assert all(b > a for a, b in itertools.pairwise(ys))  # posY grows downwards


def test_shapes_rotation():
    for scale in range(6):
        square = one(shape=0, scale=scale, orientation=0)
        quarter = one(shape=0, scale=scale, orientation=10)  # 10 of 40 = 90 degrees
        assert abs(lit(quarter) - lit(square)) <= 0.02 * lit(square)
        diamond = one(shape=0, scale=scale, orientation=5)  # 45 degrees
        assert (diamond != square).sum() > 0.1 * lit(square)
    # Half a turn leaves square and ellipse (point-symmetric) alone but flips the heart.
    for shape, symmetric in [(0, True), (1, True), (2, False)]:
        diff = (one(shape=shape, orientation=0) != one(shape=shape, orientation=20)).sum()
        assert (diff <= 2) if symmetric else (diff > 20), (shape, diff)


def test_shapes_orientation_convention():
    """Orientation 0 shows an upright heart; orientation grows counter-clockwise on screen."""
    heart = one(shape=2, orientation=0)
    rows = np.flatnonzero(heart.any(axis=1))
    top, bottom = heart[rows[0] : rows[len(rows) // 2]], heart[rows[len(rows) // 2] : rows[-1] + 1]
    assert top.sum() > 1.3 * bottom.sum()  # the two lobes are on top, the point at the bottom
    # The ellipse's long axis is horizontal at 0 and runs lower-left to upper-right at 45 degrees.
    r, c = np.nonzero(one(shape=1, orientation=0))
    assert np.ptp(c) > 1.5 * np.ptp(r)
    r, c = np.nonzero(one(shape=1, orientation=5))
    assert np.corrcoef(c, -r)[0, 1] > 0.5


@pytest.mark.parametrize("size", [64, 48, 32])
def test_shapes_stay_inside_the_frame(size):
    # Largest scale, every shape and orientation, at the four extreme positions.
    grid = np.array(
        [
            [shape, 5, o, x, y]
            for shape in range(3)
            for o in range(40)
            for x in (0, 31)
            for y in (0, 31)
        ]
    )
    images = S.render(grid, size)[:, 0]
    border = np.concatenate(
        [images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1
    )
    assert border.sum() == 0
    # ... and even the smallest shape is visible.
    smallest = S.render(np.array([[k, 0, o, 0, 31] for k in range(3) for o in range(40)]), size)
    assert (smallest.sum(axis=(1, 2, 3)) >= 5).all()


def test_shapes_other_image_size():
    ds = load_dataset("shapes", image_size=32, split="val")
    batch = ds.get_batch([0, 1])
    assert batch.shape == (2, 1, 32, 32) and ds.input_shape == (1, 32, 32)
    with pytest.raises(DataError, match=r"image_size >= 32"):
        load_dataset("shapes", image_size=16)


# ---------------------------------------------------------------- digits


def test_digits():
    train, val = load_dataset("digits"), load_dataset("digits", split="val")
    assert len(train) + len(val) == 1797
    assert len(val) == round(0.1 * 1797)
    assert not set(train.rows) & set(val.rows)
    x = train.get_batch(np.arange(len(train)))
    assert x.shape == (len(train), 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0  # 0..16 scaled by 1/16
    assert set(np.unique(x * 16)) <= set(range(17))
    assert sorted(set(train.labels)) == list(range(10))
    assert np.array_equal(train.factors[:, 0], train.labels)
    assert train.factor_names == ["label"] and train.factor_sizes == [10]


# ---------------------------------------------------------------- fashion-mnist


def write_idx(path: Path, array: np.ndarray, magic: int, *, truncate: int | None = None) -> None:
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(data[:truncate])


def fake_fashion(folder: Path, n_train: int = 12, n_test: int = 5) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (n_train, 28, 28))
    write_idx(folder / "train-images-idx3-ubyte.gz", train, 0x803)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10, 0x801)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)), 0x803)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10, 0x801)
    return train


def test_fashion_reader_on_small_files(tmp_path):
    train_images = fake_fashion(tmp_path / "fm")
    train = load_dataset("fashion-mnist", data_path=str(tmp_path / "fm"))
    val = load_dataset("fashion-mnist", split="val", data_path=str(tmp_path / "fm"))
    assert (len(train), len(val)) == (12, 5)
    assert np.array_equal(train.get_batch(np.arange(12))[:, 0], (train_images / 255).astype("f4"))
    assert np.array_equal(train.labels, np.arange(12) % 10)
    assert len(load_dataset("fashion-mnist", split="all", data_path=str(tmp_path / "fm"))) == 17
    # A folder of IDX files given as the source is read as fashion-mnist.
    as_path = load_dataset(str(tmp_path / "fm"), split="val")
    assert as_path.source == "fashion-mnist" and len(as_path) == 5


def test_fashion_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_path=str(tmp_path))
    folder = tmp_path / "fm"
    fake_fashion(folder)
    images = np.zeros((5, 28, 28))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images, 0x803, truncate=400)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        load_dataset("fashion-mnist", split="val", data_path=str(folder))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images, 0x801)  # wrong magic
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*magic"):
        load_dataset("fashion-mnist", split="val", data_path=str(folder))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28)), 0x803)
    with pytest.raises(DataError, match=r"4 images but .* 5 labels"):
        load_dataset("fashion-mnist", split="val", data_path=str(folder))


@pytest.mark.skipif(not FASHION_PRESENT, reason=f"Fashion-MNIST not installed in {FASHION_PATH}")
def test_fashion_mnist_installed():
    train, val = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", split="val")
    assert (len(train), len(val)) == (60_000, 10_000)
    assert train.input_shape == (1, 28, 28)
    assert np.array_equal(np.bincount(train.labels), [6000] * 10)  # the classes are balanced
    assert np.array_equal(np.bincount(val.labels), [1000] * 10)
    x = val.get_batch(np.arange(0, 10_000, 7))
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert val.factor_names == ["label"] and val.label_names[9] == "Ankle boot"


@pytest.mark.skipif(not FASHION_PRESENT, reason=f"Fashion-MNIST not installed in {FASHION_PATH}")
def test_fashion_mnist_truncated_copy(tmp_path):
    shutil.copy(Path(FASHION_PATH) / "t10k-labels-idx1-ubyte.gz", tmp_path)
    head = (Path(FASHION_PATH) / "t10k-images-idx3-ubyte.gz").read_bytes()[:100]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(head)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_dataset("fashion-mnist", split="val", data_path=str(tmp_path))


# ---------------------------------------------------------------- image folders


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_gray(tmp_path):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (6, 12, 10), dtype=np.uint8)
    for i, p in enumerate(pictures):
        save_png(tmp_path / f"sub{i % 2}" / f"img{i}.png", p)  # nested: found recursively
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), split="all")
    assert ds.input_shape == (1, 12, 10) and len(ds) == 6
    # Sorted by relative path: sub0/img0, sub0/img2, sub0/img4, sub1/img1, ...
    order = [0, 2, 4, 1, 3, 5]
    assert np.array_equal(ds.get_batch(np.arange(6))[:, 0], pictures[order] / np.float32(255))
    assert ds.describe()["channels"] == 1 and ds.describe()["color"] == "L"
    assert any("1 file(s)" in note for note in ds.notes)
    train, val = (
        load_dataset(str(tmp_path), val_fraction=0.34),
        load_dataset(str(tmp_path), split="val", val_fraction=0.34),
    )
    assert (len(train), len(val)) == (4, 2)


def test_image_folder_rgb_inference_resize_and_forced_gray(tmp_path):
    rng = np.random.default_rng(1)
    save_png(tmp_path / "a.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    color = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    save_png(tmp_path / "b.png", color)
    Image.fromarray(color).save(tmp_path / "c.jpg", quality=95)
    save_png(tmp_path / "d.png", np.full((16, 16), 200, dtype=np.uint8))
    ds = load_dataset(str(tmp_path), split="all")
    assert ds.input_shape == (3, 16, 16)  # one color image makes the folder RGB
    x = ds.get_batch(np.arange(4))
    assert np.array_equal(x[1], color.transpose(2, 0, 1) / np.float32(255))
    assert np.allclose(x[3], 200 / 255)  # gray replicated into R, G and B
    assert x.min() >= 0.0 and x.max() <= 1.0
    gray = load_dataset(str(tmp_path), split="all", channels=1, image_size=8)
    y = gray.get_batch(np.arange(4))
    assert y.shape == (4, 1, 8, 8) and np.allclose(y[3], 200 / 255, atol=1 / 255)


def test_image_folder_sizes_must_agree_or_be_given(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((10, 10), dtype=np.uint8))
    save_png(tmp_path / "b.png", np.zeros((12, 10), dtype=np.uint8))
    save_png(tmp_path / "c.png", np.zeros((10, 10), dtype=np.uint8))
    save_png(tmp_path / "d.png", np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(DataError, match=r"differ in size .*b\.png.*image_size"):
        load_dataset(str(tmp_path))
    assert load_dataset(str(tmp_path), image_size=6, split="all").input_shape == (1, 6, 6)


def test_image_folder_sixteen_bit_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 32896, 65535, 65535]] * 4, dtype=np.uint16)
    for name in "abcd":
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    x = load_dataset(str(tmp_path), split="all").get_batch([0])[0, 0]
    assert np.allclose(x[0], [0.0, 128 / 255, 1.0, 1.0])


def test_image_folder_corrupt_and_empty(tmp_path):
    for i in range(4):
        save_png(tmp_path / f"ok{i}.png", np.zeros((8, 8), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset(str(tmp_path))
    (tmp_path / "broken.png").unlink()
    noise = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    good = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "full.jpg").unlink()
    # Header intact, pixel data cut short: this fails only when the pixels are decoded.
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        load_dataset(str(tmp_path), image_size=8)
    (tmp_path / "cut.jpg").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.png").write_bytes((tmp_path / "ok0.png").read_bytes())
    with pytest.raises(DataError, match=r"no images found"):
        load_dataset(str(empty))


# ---------------------------------------------------------------- arrays and tables


def tabular_data(n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(42)
    x = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 100.0, -5.0, 1e4]
    x[:, 2] = np.round(x[:, 2], 1)
    return x


def check_standardized(train: Dataset, val: Dataset, raw: np.ndarray) -> None:
    xt = train.get_batch(np.arange(len(train))).astype(np.float64)
    xv = val.get_batch(np.arange(len(val))).astype(np.float64)
    assert xt.shape == (len(train), raw.shape[1]) and train.modality == "tabular"
    assert np.abs(xt.mean(axis=0)).max() < 1e-6
    assert np.abs(xt.std(axis=0) - 1).max() < 1e-5
    assert np.abs(xv.mean(axis=0)).max() > 1e-3  # val uses train statistics, not its own
    norm = val.describe()["normalization"]
    assert np.allclose(norm["shift"], raw[train.rows].mean(axis=0), rtol=0, atol=1e-9)
    assert np.allclose(norm["scale"], raw[train.rows].std(axis=0), rtol=1e-12)


def test_npy_tabular_standardized_with_train_statistics(tmp_path):
    raw = tabular_data()
    np.save(tmp_path / "x.npy", raw)
    train = load_dataset(str(tmp_path / "x.npy"))
    val = load_dataset(str(tmp_path / "x.npy"), split="val")
    assert (len(train), len(val)) == (180, 20)
    check_standardized(train, val, raw)
    assert train.columns == ["x0", "x1", "x2", "x3"]


def test_describe_round_trip_reproduces_normalization(tmp_path):
    raw = tabular_data()
    np.save(tmp_path / "x.npy", raw)
    train = load_dataset(str(tmp_path / "x.npy"), seed=5, val_fraction=0.25)
    desc = json.loads(json.dumps(train.describe()))  # as stored in config.json
    assert desc["source"] == str((tmp_path / "x.npy").resolve())
    val = load_dataset(str(tmp_path / "x.npy"), split="val", seed=5, val_fraction=0.25)
    rebuilt = dataset_from_description(desc, split="val")
    assert np.array_equal(rebuilt.rows, val.rows)
    assert np.array_equal(
        rebuilt.get_batch(np.arange(len(val))), val.get_batch(np.arange(len(val)))
    )
    # Serving: new rows are normalized with the stored train statistics, not their own.
    np.save(tmp_path / "new.npy", raw[train.rows][:10] + 1.0)
    new = dataset_from_description(desc, source=str(tmp_path / "new.npy"))  # split: all rows
    assert len(new) == 10
    expected = (raw[train.rows][:10] + 1.0 - desc["normalization"]["shift"]) / desc[
        "normalization"
    ]["scale"]
    assert np.allclose(new.get_batch(np.arange(10)), expected, atol=1e-5)
    np.save(tmp_path / "narrow.npy", raw[:, :3])
    with pytest.raises(DataError, match=r"3 columns, the stored normalization 4"):
        dataset_from_description(desc, source=str(tmp_path / "narrow.npy"))
    # Image datasets rebuild too (the shapes description reproduces the same split).
    shapes_desc = load_dataset("shapes", split="val", seed=2).describe()
    assert np.array_equal(
        dataset_from_description(shapes_desc).get_batch([0, 1]),
        load_dataset("shapes", split="val", seed=2).get_batch([0, 1]),
    )


def write_csv(path: Path, table: dict) -> None:
    pacsv.write_csv(pa.table(table), path)


def test_csv_and_parquet(tmp_path):
    raw = tabular_data()
    columns = {name: raw[:, j] for j, name in enumerate(["age", "income", "score", "id"])}
    write_csv(tmp_path / "t.csv", columns)
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    train = load_dataset(str(tmp_path / "t.csv"))
    val = load_dataset(str(tmp_path / "t.csv"), split="val")
    check_standardized(train, val, raw)
    assert train.columns == ["age", "income", "score", "id"]
    from_parquet = load_dataset(str(tmp_path / "t.parquet"), split="val")
    assert np.allclose(from_parquet.get_batch(np.arange(20)), val.get_batch(np.arange(20)))
    # Columns must come in the training order when a description is applied to new data.
    write_csv(tmp_path / "swapped.csv", {k: columns[k] for k in ["income", "age", "score", "id"]})
    with pytest.raises(DataError, match=r"column 0 is 'income'.*'age'"):
        dataset_from_description(train.describe(), source=str(tmp_path / "swapped.csv"))


def test_csv_errors_name_column_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,name\n1,2,x\n3,4,y\n5,6,z\n7,8,w\n")
    with pytest.raises(DataError, match=r"column 'name' is not numeric"):
        load_dataset(str(path))
    path.write_text("a,b\n1,2\n3,4\n5,NaN\n7,8\n")
    with pytest.raises(DataError, match=r"column 'b' has a missing or NaN value at row 3"):
        load_dataset(str(path))
    path.write_text("a,b\n1,2\n,4\n5,6\n7,8\n")
    with pytest.raises(DataError, match=r"column 'a' has a missing or NaN value at row 2"):
        load_dataset(str(path))
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DataError, match=r"at least 2"):
        load_dataset(str(path))


def test_constant_column_gets_unit_scale(tmp_path):
    raw = tabular_data()
    raw[:, 1] = 0.1
    np.save(tmp_path / "x.npy", raw)
    ds = load_dataset(str(tmp_path / "x.npy"))
    norm = ds.describe()["normalization"]
    assert norm["scale"][1] == 1.0 and norm["constant_columns"] == ["x1"]
    assert np.abs(ds.get_batch(np.arange(len(ds)))[:, 1]).max() < 1e-6
    assert any("x1" in note for note in ds.notes)


def test_npy_images_and_array_errors(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 9, 9), dtype=np.uint8)
    np.save(tmp_path / "img.npy", images)
    ds = load_dataset(str(tmp_path / "img.npy"), split="all")
    assert ds.modality == "image" and ds.input_shape == (1, 9, 9)
    assert np.array_equal(ds.get_batch([3])[0, 0], images[3] / np.float32(255))
    cases = {
        "rank1.npy": (np.zeros(10), "rank 1"),
        "hwc.npy": (np.zeros((10, 9, 9, 3), dtype=np.uint8), r"channels-last.*transpose"),
        "range.npy": (np.full((10, 1, 4, 4), 2.0), r"\[0, 1\].*divide"),
        "nan.npy": (np.where(np.eye(10, 3) > 0, np.nan, 1.0), "non-finite value .* row 0"),
        "obj.npy": (np.array([{"a": 1}] * 10, dtype=object), "plain numeric"),
        "short.npy": (np.zeros((3, 2)), "at least 2"),
    }
    for name, (array, pattern) in cases.items():
        np.save(tmp_path / name, array, allow_pickle=True)
        with pytest.raises(DataError, match=pattern) as err:
            load_dataset(str(tmp_path / name))
        assert name in str(err.value) or name == "short.npy"
    with pytest.raises(DataError, match=r"9x9 images, not 8x8"):
        load_dataset(str(tmp_path / "img.npy"), image_size=8)


def test_npz_with_labels_and_factors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 5, 5)).astype(np.float32)
    labels = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    ds = load_dataset(str(tmp_path / "d.npz"), split="all", seed=np.int64(3))
    assert json.loads(json.dumps(ds.describe()))["factor_sizes"] == [4]
    assert np.array_equal(ds.get_batch([2]), x[[2]])
    assert np.array_equal(ds.labels, labels) and ds.factor_names == ["label"]
    assert np.array_equal(ds.get_factors([5, 6])[:, 0], [1, 2])
    factors = np.stack([labels, np.arange(20) // 10], axis=1)
    np.savez(tmp_path / "f.npz", x=x, factors=factors, factor_names=np.array(["a", "b"]))
    ds = load_dataset(str(tmp_path / "f.npz"), split="all")
    assert ds.factor_names == ["a", "b"] and ds.factor_sizes == [4, 2]
    np.savez(tmp_path / "bad.npz", x=x, factors=factors + 0.5)
    with pytest.raises(DataError, match=r"integer codes"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "nox.npz", inputs=x)
    with pytest.raises(DataError, match=r"key 'x'.*\['inputs'\]"):
        load_dataset(str(tmp_path / "nox.npz"))


def test_batch_indices_are_checked():
    ds = load_dataset("digits", split="val")
    with pytest.raises(IndexError):
        ds.get_batch([len(ds)])
    with pytest.raises(IndexError):
        ds.get_batch(np.array([0.5]))
    assert ds.get_batch(np.array([], dtype=np.int64)).shape == (0, 1, 8, 8)
    batches = list(ds.iter_batches(64))
    assert [len(b) for b in batches] == [64, 64, len(ds) - 128]
    assert np.array_equal(np.concatenate(batches), ds.get_batch(np.arange(len(ds))))
