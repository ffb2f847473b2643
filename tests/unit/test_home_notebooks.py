"""A new home gets its prepared notebooks once, at the server's start
(gridhub.hub.homecopy): a masterclass student the class's notebooks, a
physicist the notebook image's examples (getting-started, AGC). The compose
glue's container command is run here by `sh`, as the container runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gridhub.hub.homecopy import main
from hub_build import offline_discovery
from traitlets.config.loader import PyFileConfigLoader

ROOT = Path(__file__).resolve().parents[2]
IAM = {
    "GRIDHUB_IAM_ISSUER": "https://iam.example.org/",
    "GRIDHUB_IAM_CLIENT_ID": "gridhub",
}


def glue_cmd(tmp_path, monkeypatch, env: dict[str, str]) -> list[str]:
    """DockerSpawner's command as the hub image's config makes it (IAM mode's
    discovery of the issuer answered here: no network in unit tests)."""
    offline_discovery(monkeypatch)
    for key in [k for k in os.environ if k.startswith(("GRIDHUB_", "FACILITY_"))]:
        monkeypatch.delenv(key)
    for key, value in {
        "GRIDHUB_STATE_DIR": str(tmp_path / "state"),
        "GRIDHUB_EXTRA_CONFIG_DIR": str(ROOT / "images/hub/jupyterhub_config.d"),
        "FACILITY_PROJECT": "gridhubunit",
        **env,
    }.items():
        monkeypatch.setenv(key, value)
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(ROOT / "hub_config")).load_config()
    return list(c.DockerSpawner.cmd)


def start(cmd: list[str], home: Path, tmp_path: Path, env: dict[str, str]) -> str:
    """Run the container's command with a stand-in jupyterhub-singleuser that
    prints its arguments; `python` is this environment's (gridhub installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    server = bin_dir / "jupyterhub-singleuser"
    server.write_text('#!/bin/sh\necho "SERVER $*"\n')
    server.chmod(0o755)
    # (a wrapper, not a symlink: a symlinked venv python outside the venv's
    # bin/ does not find its pyvenv.cfg and runs without the venv's packages)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    run_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), **env}
    if "PYTHONPATH" in os.environ:  # (a run against a source tree)
        run_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    out = subprocess.run(
        [*cmd, "--debug"],
        env=run_env,
        cwd=tmp_path,  # (a start command's '.' would be here)
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout + out.stderr


def test_a_physicists_new_home_gets_the_examples_once(tmp_path, monkeypatch):
    cmd = glue_cmd(tmp_path, monkeypatch, IAM)
    home = tmp_path / "home"
    home.mkdir()
    # the image's examples, as images/notebook/Dockerfile copies them
    examples = tmp_path / "examples"
    (examples / "agc-ttbar").mkdir(parents=True)
    (examples / "00-getting-started.ipynb").write_bytes(
        (ROOT / "notebooks/00-getting-started.ipynb").read_bytes()
    )
    (examples / "agc-ttbar" / "agc.py").write_text("# agc\n")
    out = start(cmd, home, tmp_path, {"GRIDHUB_EXAMPLES": str(examples)})
    assert "SERVER --debug" in out, out  # the server starts with the hub's arguments
    assert (home / "00-getting-started.ipynb").is_file()
    assert (home / "agc-ttbar" / "agc.py").read_text() == "# agc\n"
    # the user's edits and deletions stay: nothing is copied a second time
    (home / "agc-ttbar" / "agc.py").write_text("# mine\n")
    (home / "00-getting-started.ipynb").unlink()
    out = start(cmd, home, tmp_path, {"GRIDHUB_EXAMPLES": str(examples)})
    assert "SERVER --debug" in out and "copied 0 file(s)" in out, out
    assert (home / "agc-ttbar" / "agc.py").read_text() == "# mine\n"
    assert not (home / "00-getting-started.ipynb").exists()


def test_a_student_gets_the_class_notebooks_not_the_examples(tmp_path, monkeypatch):
    cmd = glue_cmd(tmp_path, monkeypatch, {})
    home, examples, mounted = tmp_path / "home", tmp_path / "examples", tmp_path / "class"
    for d in (home, examples, mounted):
        d.mkdir()
    (examples / "00-getting-started.ipynb").write_text("{}")
    (mounted / "01-dimuon.ipynb").write_text("{}")
    env = {"GRIDHUB_EXAMPLES": str(examples), "GRIDHUB_MASTERCLASS_NOTEBOOKS": str(mounted)}
    out = start(cmd, home, tmp_path, env)
    assert "SERVER --debug" in out, out
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == [
        "01-dimuon.ipynb"
    ]


def test_an_image_without_examples_starts_the_server_and_copies_nothing(tmp_path, monkeypatch):
    """An older notebook image has no $GRIDHUB_EXAMPLES: an empty SOURCE would be
    '.', the working directory; it is refused and the server still starts."""
    cmd = glue_cmd(tmp_path, monkeypatch, IAM)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "stray.txt").write_text("not for the home")
    out = start(cmd, home, tmp_path, {})
    assert "SERVER --debug" in out, out
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("args", [["examples", "", "/home/x"], ["examples", "/srv"], []])
def test_homecopy_refuses_bad_arguments(args, capsys):
    assert main(args) == 2
    assert "usage: python -m gridhub.hub.homecopy NAME SRC HOME" in capsys.readouterr().err
