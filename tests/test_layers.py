"""The imports run one way (pyproject.toml, [tool.importlinter]): a forbidden import fails here."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_api_process_loads_neither_torch_nor_the_worker():
    code = (
        "import sys, backend.api.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker', 'zennit')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
