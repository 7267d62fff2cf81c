"""A run without the I3A cells says so at its end: it skips the tests that read them, and a
run that skipped half the suite must not read as green. Under CI=true they fail instead."""

import os
import subprocess
import sys

from backend.testing import ROOT

# data-dependent tests that need no service; they stop at the i3a_dir fixture
DATA_TESTS = "tests/ml/test_training_on_real_cells.py"


def _pytest_without_data(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["XAL_I3A_DIR"] = str(tmp_path)  # an empty folder: no labels.csv
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", DATA_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_run_without_the_data_ends_naming_the_path_and_the_skipped_tests(tmp_path):
    run = _pytest_without_data(tmp_path, ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    last_lines = run.stdout.strip().splitlines()[-2:]
    assert "3 tests skipped" in last_lines[0] and str(tmp_path) in last_lines[0], run.stdout
    assert "XAL_I3A_DIR" in last_lines[0] and "not" in last_lines[0]
    assert "3 skipped" in last_lines[1]


def test_under_ci_the_data_tests_fail_and_nothing_is_counted_as_skipped(tmp_path):
    run = _pytest_without_data(tmp_path, ci=True)
    assert run.returncode == 1 and "3 errors" in run.stdout.splitlines()[-1], run.stdout
    assert "tests skipped" not in run.stdout
