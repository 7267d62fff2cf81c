"""What both experiment protocols (per_budget, curve) share to resume and to write their outputs:
the settings' blob store pointed at an experiment's cache, JSON (atomic) and CSV writing, the
machine a run was made on, and matplotlib without a display. No database."""

import contextlib
import csv
import json
import os
import platform
from pathlib import Path

import torch

from backend.core.blobs import get_blob_store
from backend.core.settings import get_settings


@contextlib.contextmanager
def blob_store_under(data_dir: Path):
    """compute_round reads cells and checkpoints from the settings' blob store: point it here."""
    saved = os.environ.get("XAL_DATA_DIR")
    os.environ["XAL_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    try:
        yield get_blob_store()
    finally:
        if saved is None:
            os.environ.pop("XAL_DATA_DIR", None)
        else:
            os.environ["XAL_DATA_DIR"] = saved
        get_settings.cache_clear()


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": get_settings().device,
        "python": platform.python_version(),
    }


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
