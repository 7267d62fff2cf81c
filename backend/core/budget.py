"""The budget loop's sizes (thesis Table 2), one rule for the product and the simulator:
B = 20% of the pool, k = 15% of B but at least one cell per class (the explainable strategies
need that many labeled cells for their centres), m = 10% of B, at least one cell each; halves
round up. Settings a project gives are kept, but B never exceeds the pool nor k exceeds B."""


def half_up(x: float) -> int:
    return int(x + 0.5)


def budget_sizes(
    pool_size: int, n_classes: int, budget: int | None = None, initial_size: int | None = None, step_size: int | None = None
) -> tuple[int, int, int]:
    """(B, k, m)."""
    budget = min(pool_size, budget if budget is not None else max(1, half_up(0.2 * pool_size)))
    initial_size = initial_size if initial_size is not None else max(n_classes, half_up(0.15 * budget))
    step_size = step_size if step_size is not None else max(1, half_up(0.1 * budget))
    return budget, min(initial_size, budget), step_size
