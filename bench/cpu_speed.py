"""How fast this machine's CPU runs Python right now. The development machines are shared VMs
whose speed changes by up to 2x within an hour (seen: 13.8 and 25.1 us for the same loop), so
each benchmark run records this beside its figures: compare runs at similar speeds, or scale."""

import timeit


def python_loop_us() -> float:
    """Best of 5 timings of `sum(range(1000))`, in microseconds (lower is faster)."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6
