"""Shared fixtures. The real I3A cells live in ../shared/data/i3a and are read in place.

Where they are missing (a user's fresh machine) data-dependent tests skip; in CI
(CI=true) a missing data set is a failure, not a skip.
"""
import csv
import os
from pathlib import Path

import pytest

I3A_DIR = Path(os.environ.get("XAL_I3A_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "i3a"))


def _require_i3a() -> Path:
    if (I3A_DIR / "labels.csv").is_file():
        return I3A_DIR
    message = f"real I3A cells not found at {I3A_DIR} (set XAL_I3A_DIR)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def i3a_dir() -> Path:
    return _require_i3a()


@pytest.fixture(scope="session")
def i3a_rows(i3a_dir) -> list[dict]:
    """labels.csv rows: image_id, pattern, image_path, mask_path (paths relative to i3a_dir)."""
    with open(i3a_dir / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def balanced_sample(rows: list[dict], per_class: int, offset: int = 0) -> list[dict]:
    """The same few cells of every class, deterministically (rows are sorted by id)."""
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["pattern"], []).append(row)
    return [row for cls in sorted(by_class) for row in by_class[cls][offset : offset + per_class]]
