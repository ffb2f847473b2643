"""The masterclass benchmark runs end to end with two students and writes
its JSON (bench/masterclass_load.py; figures are not checked, only that
the run works and reports what docs/performance.md quotes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(150)


@pytest.mark.skipif(os.geteuid() != 0, reason="starts servers as another account: run as root")
def test_masterclass_benchmark_two_students(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "masterclass_load.py"), "--users", "2"],
        env={**os.environ, "GRIDHUB_BENCH_RESULTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = tmp_path.glob("masterclass_load-*.json")
    result = json.loads(path.read_text())
    assert result["users"] == 2 and result["failures"] == 0, result["errors"]
    assert [s["result"] for s in result["students"]] == ["332833500"] * 2
    steps = result["seconds_after_login"]
    assert steps["cell_result"]["n"] == 2
    assert steps["login"]["p50"] <= steps["server_ready"]["p50"] <= steps["cell_result"]["p50"]
    for group in ("hub", "traefik", "servers+kernels"):
        assert result["resources"][group]["peak_rss_mb"] > 0, result["resources"]
    assert result["resources"]["servers+kernels"]["peak_processes"] >= 4  # 2 servers, 2 kernels
    assert len(result["load_average"]["before"]) == 3
