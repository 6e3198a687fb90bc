"""The code base stays lint-clean (ruff) and type-checks (mypy), both configured in
pyproject.toml."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: install the dev extra (scripts/test does)"
    out = subprocess.run([ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_passes():
    assert importlib.util.find_spec("mypy"), (
        "mypy is not installed: install the dev extra (scripts/test does)"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "iron_runtime"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
