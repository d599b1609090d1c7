"""Writing analysis numbers: JSON and CSV, atomically."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_write

__all__ = ["write_json", "write_csv", "write_matrix_csv"]


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, default=_default)
        f.write("\n")
    return Path(path)


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Rows of dicts with the same keys (those of the first row) as CSV with a header."""
    with atomic_write(path, newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return Path(path)


def write_matrix_csv(
    path: str | os.PathLike[str], matrix: np.ndarray, row_label: str = "row", fmt: str = "%.6g"
) -> Path:
    """A 2-D array as CSV: a header ``row_label,0,1,...`` then one line per row, led by its index."""
    m = np.asarray(matrix)
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow([row_label, *range(m.shape[1])])
        for i, row in enumerate(m):
            w.writerow([i, *(fmt % v for v in row)])
    return Path(path)
