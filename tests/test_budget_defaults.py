from backend.core.db.models import Project, ProjectClass
from backend.services.projects import resolve_budget


def _project(n_classes: int, **settings) -> Project:
    return Project(
        name="p",
        classes=[ProjectClass(name=f"c{i}", key=str(i), position=i) for i in range(n_classes)],
        budget=settings.get("budget"),
        initial_size=settings.get("initial_size"),
        step_size=settings.get("step_size"),
    )


def test_defaults_follow_the_thesis_budget_loop():
    project = _project(6)
    resolve_budget(project, pool_size=10_000)
    assert (project.budget, project.initial_size, project.step_size) == (2000, 300, 200)


def test_a_default_first_batch_has_at_least_one_cell_per_class():
    project = _project(6)
    resolve_budget(project, pool_size=100)  # B = 20, 15% of B = 3 < 6 classes
    assert (project.budget, project.initial_size, project.step_size) == (20, 6, 2)


def test_explicit_settings_are_kept_but_never_exceed_the_pool():
    project = _project(6, budget=500, initial_size=2, step_size=7)
    resolve_budget(project, pool_size=300)
    assert (project.budget, project.initial_size, project.step_size) == (300, 2, 7)


def test_the_product_and_the_simulator_size_the_loop_by_one_rule():
    from worker.experiments.per_budget import budget_plan

    # B = 25: m = 10% of B = 2.5 rounds up, in both (round() had made it 2 in the product, 3 in the simulator)
    project = _project(6)
    resolve_budget(project, pool_size=125)
    assert (project.budget, project.initial_size, project.step_size) == (25, 6, 3)
    plan = budget_plan(125, 20, n_classes=6)
    assert plan[0] == project.initial_size and plan[1] == project.step_size and sum(plan) == project.budget
