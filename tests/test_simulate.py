"""`xal simulate` on a small labeled folder of real I3A cells: every output, resumability, and an
IN case that pretrains (Golgi left out) and transfers to all six classes."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import balanced_sample
from worker.experiments.per_budget import SimulationSettings, budget_plan, simulate

pytestmark = pytest.mark.slow

CASES = ["rs", "cal", "in-al"]
SETTINGS = dict(pool_size=50, test_size=30, pretrain_size=40, max_epochs=2, patience=2, batch_size=32)


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory, i3a_dir, i3a_rows):
    """A labels.csv folder in the import format, 40 cells of each class (copied outside the repo)."""
    folder = tmp_path_factory.mktemp("cells")
    rows = balanced_sample(i3a_rows, per_class=40)
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "pattern"])
        for row in rows:
            (folder / row["pattern"]).mkdir(exist_ok=True)
            shutil.copy(i3a_dir / row["image_path"], folder / row["image_path"])
            writer.writerow([row["image_path"], row["pattern"]])
    return folder


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, labeled_folder):
    out = tmp_path_factory.mktemp("simulation")
    settings = SimulationSettings(data=str(labeled_folder), **SETTINGS)
    computed = simulate(settings, out, CASES, [20, 100], [0])
    return settings, out, computed


def _rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_a_budget_is_spent_in_an_initial_random_batch_then_steps_of_a_tenth():
    # B = 20% of 500 = 100: k = 15% of B, then m = 10% of B until B; the last round only trains
    assert budget_plan(500, 20, n_classes=6) == [15, 10, 10, 10, 10, 10, 10, 10, 10, 5, 0]
    # B = 10: k = 15% of B = 2 is fewer than the 6 classes, so k = 6; m = 1, at least 1
    assert budget_plan(100, 10, n_classes=6) == [6, 1, 1, 1, 1, 0]
    assert budget_plan(100, 100, n_classes=6) == [100, 0]  # the ceiling: everything labeled, one training


def test_simulation_writes_steps_summary_diagnostics_and_plots(simulated):
    _, out, computed = simulated
    assert len(computed) == len(CASES) * 2

    header, steps = _rows(out / "steps.csv")
    assert header == ["case", "seed", "budget_pct", "step", "n_labels", "aca", "mca"]
    # 20% of 50 = 10 labels, 6 then one at a time: five trained rounds; 100%: one on the whole pool
    assert len(steps) == len(CASES) * (5 + 1)
    ceiling = [row for row in steps if row["budget_pct"] == "100"]
    assert {row["n_labels"] for row in ceiling} == {"50"}
    assert [int(row["n_labels"]) for row in steps if row["case"] == "cal" and row["budget_pct"] == "20"] == list(
        range(6, 11)
    )

    header, summary = _rows(out / "summary.csv")
    assert header == ["case", "budget_pct", "n_seeds", "aca_mean", "aca_std", "mca_mean", "mca_std"]
    assert {(row["case"], row["budget_pct"]) for row in summary} == {(case, b) for case in CASES for b in ("20", "100")}
    assert all(0 <= float(row["aca_mean"]) <= 1 and row["n_seeds"] == "1" for row in summary)

    header, diagnostics = _rows(out / "diagnostics.csv")
    assert header == [
        "case",
        "seed",
        "budget_pct",
        "step",
        "n_selected",
        "hit_rate",
        "pool_error_rate",
        "pool_expected_error",
        "error_auroc",
    ]
    # one row per batch a model picked: steps 1..4 of each 20% run (the last step only trains); random
    # sampling reads nothing of the pool, so it has no pool error rate to compare its picks with
    assert len(diagnostics) == (len(CASES) - 1) * 4 and "rs" not in {row["case"] for row in diagnostics}
    assert all(row["n_selected"] == "1" and 0 <= float(row["pool_error_rate"]) <= 1 for row in diagnostics)

    header, reach = _rows(out / "reach.csv")
    assert header[:3] == ["case", "ceiling_aca", "smallest_budget_pct_within_1pt"] and len(reach) == len(CASES)
    header, confusion = _rows(out / "confusion.csv")
    assert len(confusion) == len(CASES) * 2 * 6
    for image in ("label_efficiency.png", "confusion.png"):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((out / "config.json").read_text())
    assert config["sizes"]["0"] == {"pool": 50, "test": 30, "pretrain": 40}


def test_an_in_case_starts_from_a_model_pretrained_without_golgi(simulated):
    _, out, _ = simulated
    record = json.loads((out / "runs" / "in-al_seed0_budget20.json").read_text())
    assert "Golgi" not in record["pretraining"]["class_names"] and len(record["pretraining"]["class_names"]) == 5
    assert len(record["class_names"]) == 6 and len(record["final_metrics"]["per_class_accuracy"]) == 6


def test_the_ceiling_is_trained_once_per_start_as_nothing_is_selected_at_100_percent(simulated):
    _, out, _ = simulated
    rs, cal, in_al = (json.loads((out / "runs" / f"{case}_seed0_budget100.json").read_text()) for case in CASES)
    assert cal["copied_from"] == "rs" and cal["steps"] == rs["steps"]
    assert "copied_from" not in in_al and in_al["pretraining"]


def test_a_rerun_skips_finished_runs(simulated):
    settings, out, _ = simulated
    before = {path.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*.json")}
    assert simulate(settings, out, CASES, [20, 100], [0]) == []
    assert {path.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*.json")} == before


def test_a_rerun_with_other_settings_into_the_same_folder_is_refused(simulated):
    settings, out, _ = simulated
    from backend.core.errors import Invalid

    with pytest.raises(Invalid, match="pool_size"):
        simulate(SimulationSettings(**{**settings.__dict__, "pool_size": 40}), out, ["rs"], [20], [0])


def test_an_in_run_does_not_depend_on_what_ran_before_it(simulated):
    import torch

    from worker.experiments.cells import read_labeled_folder
    from worker.experiments.per_budget import run_case, split_cells
    from worker.experiments.store import blob_store_under

    settings, out, _ = simulated
    pretrained = json.loads((out / "cache" / "pretrained-seed0.json").read_text())["checkpoint"]
    with blob_store_under(out / "cache") as store:
        cells = read_labeled_folder(Path(settings.data), None, store)
        split = split_cells(cells, 0, settings)
        runs = []
        for noise in (1, 2):
            torch.manual_seed(noise)  # whatever ran before leaves torch's generator somewhere else
            torch.rand(noise)
            runs.append(run_case(cells, split, "in-rs", 0, 100, settings, store, pretrained)["steps"][0]["aca"])
    assert runs[0] == runs[1]


def test_a_clusters_start_spreads_round_0_over_a_deep_clustering_of_the_pool(simulated, tmp_path):
    settings, out, _ = simulated
    assert simulate(settings, tmp_path, ["rs-clusters-start"], [20], [0], cache=out / "cache") == [
        "rs-clusters-start_seed0_budget20.json"
    ]
    record = json.loads((tmp_path / "runs" / "rs-clusters-start_seed0_budget20.json").read_text())
    clustering = json.loads((out / "cache" / "pool-clusters-seed0.json").read_text())
    cluster_of = dict(zip(clustering["pool"], clustering["clusters"]))
    first_batch = record["labeled"][: record["plan"][0]]
    assert record["first_batch_summary"]["cold_start"] == "clusters"
    # k = 6 cells over 6 clusters: one from each cluster the pool has
    assert len({cluster_of[cell] for cell in first_batch}) == min(len(first_batch), len(set(clustering["clusters"])))
    assert record["pool_clustering"]["metrics"]["n_cells"] == 50 and "acc" in record["pool_clustering"]["metrics"]
