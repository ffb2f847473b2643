"""ansible/ passes ansible-lint with the production profile (the strictest)."""

import os
import subprocess
import sys
from pathlib import Path

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"


def test_ansible_lint_production_profile():
    bindir = Path(sys.executable).parent
    p = subprocess.run(
        [str(bindir / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=300,
        # ansible-lint runs ansible-playbook --syntax-check: the venv's, not another
        env={**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"},
    )
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-6000:]
    assert "Profile 'production' was required, and it passed" in p.stderr + p.stdout
