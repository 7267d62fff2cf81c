"""Where to cut a pool into chunks for separate workers (issue #6)."""

import math


def batch_aligned_chunks(pool_size: int, chunk_size: int, *batch_sizes: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of the pool: about `chunk_size` cells, on multiples of every
    batch size the per-cell work uses, so that each batch holds the same cells as in one pass
    over the whole pool and the concatenated outputs equal an unchunked run's bit for bit."""
    step = math.lcm(*batch_sizes)
    size = max(step, round(chunk_size / step) * step)
    return [(start, min(start + size, pool_size)) for start in range(0, pool_size, size)]
