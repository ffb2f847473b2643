"""The hub refuses to start on invalid deployer settings, naming the key."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from .hub_fixtures import HUB_CONFIG
except ImportError:
    from hub_fixtures import HUB_CONFIG

JUPYTERHUB = str(Path(sys.executable).parent / "jupyterhub")


def run_hub(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [JUPYTERHUB, "-f", str(HUB_CONFIG)],
        cwd=tmp,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "GRIDHUB_STATE_DIR": str(tmp / "state"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_misspelled_env_key_stops_the_hub():
    with tempfile.TemporaryDirectory() as d:
        result = run_hub({"GRIDHUB_FACILTY_NAME": "Oops"}, Path(d))
        assert result.returncode != 0
        assert "GRIDHUB_FACILTY_NAME" in result.stderr
        assert "did you mean GRIDHUB_FACILITY_NAME?" in result.stderr
        assert not (Path(d) / "state").exists()  # nothing was started or generated


def test_misspelled_yaml_key_and_bad_value_stop_the_hub():
    with tempfile.TemporaryDirectory() as d:
        config = Path(d) / "gridhub.yaml"
        config.write_text("facility_name: Test\ncull_idle_timout: 60\n")
        result = run_hub({"GRIDHUB_CONFIG_FILE": str(config)}, Path(d))
        assert result.returncode != 0
        assert "cull_idle_timout" in result.stderr and "cull_idle_timeout" in result.stderr
        result = run_hub({"GRIDHUB_CPU_LIMIT": "lots"}, Path(d))
        assert result.returncode != 0
        assert "GRIDHUB_CPU_LIMIT" in result.stderr
