"""CSV and Parquet files of numeric columns, read with pyarrow (one library for both).

The first CSV row is the header. Integer, float, boolean and decimal columns are features; any
other column (text, dates, ...) is an error naming it, as is a missing or NaN value (naming its
row and column): both must be fixed in the file, not guessed at here. Values are standardized
per column with train-split statistics (see ``array_dataset.tabular_dataset``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sculptserve.training.data.array_dataset import ArrayDataset, tabular_dataset
from sculptserve.training.data.base import LoadSpec
from sculptserve.training.data.errors import DataError


def _pyarrow(path: Path) -> Any:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"reading {path.suffix} files needs pyarrow: pip install pyarrow") from None
    return pyarrow


def load_csv(spec: LoadSpec, path: Path) -> ArrayDataset:
    pa = _pyarrow(path)
    try:
        table = pa.csv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({exc})") from None
    return _table_dataset(spec, path, table)


def load_parquet(spec: LoadSpec, path: Path) -> ArrayDataset:
    pa = _pyarrow(path)
    try:
        table = pa.parquet.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
    return _table_dataset(spec, path, table)


def table_to_array(table: Any, what: str) -> tuple[np.ndarray, list[str]]:
    """A pyarrow table of numeric columns as a float64 (n, F) array and its column names."""
    import pyarrow as pa

    columns = [str(name) for name in table.column_names]
    if not columns:
        raise DataError(f"{what}: no columns")
    if table.num_rows == 0:
        raise DataError(f"{what}: no data rows")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    out = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for j, (name, column) in enumerate(zip(columns, table.columns, strict=True)):
        if not any(check(column.type) for check in numeric):
            raise DataError(
                f"{what}: column {name!r} is not numeric (type {column.type}); drop it or encode "
                "it as numbers"
            )
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            kind = "missing or NaN" if np.isnan(values[row]) else "infinite"
            raise DataError(
                f"{what}: column {name!r} has a {kind} value at row {row + 1} (counting data rows "
                f"from 1 below the header; {int(bad.sum())} such value(s) in the column); fill "
                "or drop those rows"
            )
        out[:, j] = values
    return out, columns


def _table_dataset(spec: LoadSpec, path: Path, table: Any) -> ArrayDataset:
    raw, columns = table_to_array(table, str(path))
    return tabular_dataset(spec, raw, what=str(path), columns=columns)
