"""Put on the API server's PYTHONPATH by bench/labeling_load.py: every garbage collection of
generation 1 or 2, and any longer than 5 ms, as one line "wall-clock-time generation ms" in the
file $XAL_GC_TRACE. A collection pauses every request the process has in flight."""

import gc
import os
import time

_trace = os.environ.get("XAL_GC_TRACE")
_started = [0.0]


def _time_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took_ms = (time.perf_counter() - _started[0]) * 1000
    if info["generation"] >= 1 or took_ms > 5:
        with open(_trace, "a") as trace:  # type: ignore[arg-type]
            trace.write(f"{time.time():.3f} {info['generation']} {took_ms:.2f}\n")


if _trace:
    gc.callbacks.append(_time_collection)
