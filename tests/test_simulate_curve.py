"""`xal simulate --curve` on small folders of real I3A cells: one run per case and seed, resumed
and extended step by step, a separate test folder, and its tables."""

import csv
import json
import shutil

import pytest

from conftest import balanced_sample
from worker.experiments.curve import CurveSettings, curve, random_baseline, step_plan, step_sizes, write_curve_outputs

pytestmark = pytest.mark.slow

SETTINGS = dict(max_epochs=1, patience=1, batch_size=32, pretext_epochs=1, validation_fraction=0.05)


def _folder(root, rows, i3a_dir):
    root.mkdir()
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "pattern"])
        for row in rows:
            (root / row["pattern"]).mkdir(exist_ok=True)
            shutil.copy(i3a_dir / row["image_path"], root / row["image_path"])
            writer.writerow([row["image_path"], row["pattern"]])
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory, i3a_dir, i3a_rows):
    """30 cells of each class to label, 10 others of each class to test on (copied outside the repo)."""
    root = tmp_path_factory.mktemp("curve")
    return (
        _folder(root / "data", balanced_sample(i3a_rows, per_class=30), i3a_dir),
        _folder(root / "test", balanced_sample(i3a_rows, per_class=10, offset=30), i3a_dir),
    )


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_plan_is_two_percent_then_one_percent_steps():
    assert step_sizes(8372) == (167, 84)
    assert step_plan(8372, 2) == [167]
    assert step_plan(8372, 5)[-1] == 419 and step_plan(8372, 10)[-1] == 839 and step_plan(8372, 20)[-1] == 1679


def test_each_case_is_compared_with_random_sampling_from_the_same_start_and_training():
    assert random_baseline("coverage-entropy", "contrastive") == "rs"
    assert random_baseline("coverage-entropy-restart", "contrastive") == "rs-restart"
    assert random_baseline("cal-scratch", "scratch") == "rs-scratch"
    assert random_baseline("rs-restart", "contrastive") == "rs-restart"


def test_runs_resume_and_extend_step_by_step(tmp_path, folders):
    data, test = folders
    settings = CurveSettings(data=str(data), test_data=str(test), **SETTINGS)
    out = tmp_path / "out"
    curve(settings, out, ["rs-scratch", "coverage-entropy"], [0], to_pct=5, cache=tmp_path / "cache")
    config = json.loads((out / "config.json").read_text())
    pool = config["sizes"]["pool"]
    assert config["sizes"]["test"] == 60 and config["sizes"]["validation"] == 12 and pool == 168
    first = json.loads((out / "runs" / "rs-scratch_seed0.json").read_text())
    assert [s["n_labels"] for s in first["steps"]] == step_plan(pool, 5)
    assert all(s["aca"] is not None and len(s["history"]) == 1 for s in first["steps"])

    curve(settings, out, ["rs-scratch", "coverage-entropy", "rs", "rs-restart"], [0], to_pct=10, cache=tmp_path / "cache")
    extended = json.loads((out / "runs" / "rs-scratch_seed0.json").read_text())
    assert [s["n_labels"] for s in extended["steps"]] == step_plan(pool, 10)
    assert extended["steps"][: len(first["steps"])] == first["steps"]  # went on, did not start again
    assert len(set(extended["labeled"])) == len(extended["labeled"])  # no cell labeled twice
    coverage = json.loads((out / "runs" / "coverage-entropy_seed0.json").read_text())
    assert coverage["start"] == "contrastive" and coverage["first_batch"]["summary"]["phase"] == "coverage"
    assert (tmp_path / "cache" / "contrastive-pool.json").exists()

    summary = _rows(out / "summary.csv")
    assert {(r["case"], r["pct_of_pool"]) for r in summary} >= {
        ("rs-scratch", "2"),
        ("rs-scratch", "5"),
        ("rs-scratch", "10"),
    }
    baselines = {r["case"]: r["baseline"] for r in summary}
    assert baselines == {"rs-scratch": "", "rs": "", "rs-restart": "", "coverage-entropy": "rs"}
    assert len(_rows(out / "steps.csv")) == 4 * len(step_plan(pool, 10))
    assert (out / "label_efficiency.png").stat().st_size > 0 and _rows(out / "reach.csv")
    assert (out / "training_curves.png").stat().st_size > 0  # rs's trainings, step after step

    # the full-data runs (one step on every pool cell) are ceilings, not curves: the reach table
    # aims at the pretrained start's, and neither is read off as a budget
    for case, aca in (("full", 0.9), ("full-scratch", 0.5)):
        ceiling = {**extended, "case": case, "steps": [{**extended["steps"][-1], "n_labels": pool, "aca": aca}]}
        (out / "runs" / f"{case}_seed0.json").write_text(json.dumps(ceiling))
    write_curve_outputs(out)
    assert not {r["case"] for r in _rows(out / "summary.csv")} & {"full", "full-scratch"}
    aims = {r["aca_target"] for r in _rows(out / "reach.csv") if r["target"] == "full-data ACA - 1 pt"}
    assert aims == {"0.89"}

    with pytest.raises(Exception, match="other settings"):
        curve(
            CurveSettings(data=str(data), test_data=str(test), **{**SETTINGS, "max_epochs": 2}),
            out,
            ["rs-scratch"],
            [0],
            10,
            cache=tmp_path / "cache",
        )
