"""The repository stays ruff-clean and mypy-clean (rules in extensions/pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean():
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run(
        [str(ruff), "check", "--no-cache", "extensions", "tests", "bench", "hub_config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean():
    """CONTRIBUTING promises mypy-clean sources (config: extensions/pyproject.toml);
    22 errors had crept in unseen before this test."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "src"],
        cwd=ROOT / "extensions",
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
