"""ROAR / KAR: the degradation rule on hand-made arrays, and `xal roar` on a few real I3A cells."""

import csv
import json

import numpy as np
import pytest

from backend.cli import main
from conftest import balanced_sample
from worker.experiments import roar
from worker.experiments.roar import degrade, random_maps, recommend, replaced_pixels


def test_roar_replaces_exactly_the_most_relevant_pixels_by_the_image_mean():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    maps = np.arange(16, dtype=np.float32)[::-1].reshape(1, 4, 4)  # pixel 0 most relevant
    degraded = degrade(image, maps, 0.25, "roar")
    assert np.array_equal(np.flatnonzero(degraded != image), [0, 1, 2, 3])
    assert np.all(degraded.ravel()[:4] == image.mean())
    assert np.array_equal(degraded.ravel()[4:], image.ravel()[4:])


def test_kar_replaces_exactly_the_least_relevant_pixels():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4) + 1
    maps = np.arange(16, dtype=np.float32)[::-1].reshape(1, 4, 4)
    degraded = degrade(image, maps, 0.75, "kar")
    assert np.array_equal(degraded.ravel()[:4], image.ravel()[:4])  # the top 25% kept
    assert np.all(degraded.ravel()[4:] == image.mean())


def test_ranking_is_by_signed_relevance_so_evidence_against_the_class_goes_last():
    maps = np.array([[[-10.0, 1.0], [2.0, -0.5]]])
    assert np.array_equal(replaced_pixels(maps, 0.5, "roar").ravel(), [False, True, True, False])
    assert np.array_equal(replaced_pixels(maps, 0.25, "kar").ravel(), [True, False, False, False])


def test_ties_go_in_raster_order():
    maps = np.zeros((1, 3, 3))
    assert np.array_equal(np.flatnonzero(replaced_pixels(maps, 4 / 9, "roar")), [0, 1, 2, 3])
    assert np.array_equal(np.flatnonzero(replaced_pixels(maps, 4 / 9, "kar")), [5, 6, 7, 8])


def test_each_image_replaces_the_same_count_and_roar_at_x_is_kar_at_100_minus_x():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 112, 112)).round(1)  # many ties
    for fraction in (0.0, 0.1, 0.33, 0.8, 1.0):
        replaced = replaced_pixels(maps, fraction, "roar")
        assert np.all(replaced.sum(axis=(1, 2)) == round(fraction * 112 * 112))
        assert np.array_equal(replaced, ~replaced_pixels(maps, 1 - fraction, "kar"))


def test_nothing_changes_at_zero_and_each_image_gets_its_own_original_mean():
    images = np.stack([np.full((4, 4), 0.2, np.float32), np.eye(4, dtype=np.float32)])
    maps = random_maps(images.shape, seed=3)
    assert np.array_equal(degrade(images, maps, 0.0, "roar"), images)
    everything = degrade(images, maps, 1.0, "kar")
    np.testing.assert_allclose(everything[0], 0.2)
    np.testing.assert_allclose(everything[1], 0.25)


def test_random_maps_are_seeded():
    assert np.array_equal(random_maps((2, 8, 8), 1), random_maps((2, 8, 8), 1))
    assert not np.array_equal(random_maps((2, 8, 8), 1), random_maps((2, 8, 8), 2))


def test_recommendation_rewards_a_steep_roar_drop_and_a_high_kar_curve():
    accuracy = {  # (mode, method): ACA at 0, 40, 80 %
        ("roar", "random"): (0.9, 0.8, 0.6),
        ("kar", "random"): (0.9, 0.8, 0.6),
        ("roar", "gradient"): (0.9, 0.7, 0.5),
        ("kar", "gradient"): (0.9, 0.7, 0.5),
        ("roar", "deeptaylor"): (0.9, 0.5, 0.3),
        ("kar", "deeptaylor"): (0.9, 0.85, 0.8),
    }
    rows = [
        {"mode": mode, "method": method, "fraction": x, "aca": str(a)}
        for (mode, method), values in accuracy.items()
        for x, a in zip((0, 40, 80), values)
    ]
    recommendation = recommend(rows)
    assert recommendation["method"] == "deeptaylor" and recommendation["beats_random"]
    assert recommendation["fractions"] == [40, 80]
    assert recommendation["scores"]["deeptaylor"]["score"] == pytest.approx((0.85 + 0.8) / 2 - (0.5 + 0.3) / 2)


@pytest.fixture(scope="module")
def labeled_csv(tmp_path_factory, i3a_dir, i3a_rows):
    """90 cells (15 per class, spread over specimens) listed in a labels.csv beside a link to the data."""
    folder = tmp_path_factory.mktemp("cells")
    (folder / "i3a").symlink_to(i3a_dir)
    rows = [row for start in range(0, 450, 30) for row in balanced_sample(i3a_rows, 1, start)]
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "pattern"])
        writer.writerows([f"i3a/{row['image_path']}", row["pattern"]] for row in rows)
    return folder / "labels.csv"


@pytest.mark.slow
def test_roar_command_writes_the_table_plot_and_recommendation_and_resumes(labeled_csv, tmp_path, monkeypatch):
    out = tmp_path / "roar"
    argv = [
        "roar",
        "--data",
        str(labeled_csv.parent),
        "--out",
        str(out),
        "--methods",
        "random,deeptaylor",
        "--fractions",
        "0,50",
        "--train-size",
        "60",
        "--test-size",
        "30",
        "--max-epochs",
        "1",
    ]
    main(argv)

    with open(out / "roar.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["mode", "method", "fraction", "aca", "mca", "seconds"]
    assert sorted((r["mode"], r["method"], r["fraction"]) for r in rows) == sorted(
        (mode, method, x) for mode in ("roar", "kar") for method in ("random", "deeptaylor") for x in ("0", "50")
    )
    assert all(0 <= float(r["aca"]) <= 1 and 0 <= float(r["mca"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    assert len({(r["aca"], r["mca"], r["seconds"]) for r in rows if r["fraction"] == "0"}) == 1  # one base training
    assert (out / "roar_kar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recommendation = json.loads((out / "recommendation.json").read_text())
    assert recommendation["method"] == "deeptaylor" and recommendation["fractions"] == [50]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was computed again")

    monkeypatch.setattr(roar, "train_and_test", no_training)
    before = (out / "roar.csv").read_text()
    main(argv)
    assert (out / "roar.csv").read_text() == before
    with pytest.raises(SystemExit, match="other settings"):
        main([*argv[:-1], "2"])
