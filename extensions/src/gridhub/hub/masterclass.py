"""Masterclass helpers: copy the prepared notebooks into a student's home, once.

``copy_notebooks_once(src, home)`` copies every file of `src` that is missing in `home`
and records a marker; once the marker exists nothing is copied again, so a student's
edits (or deletions) are never undone.  The hub runs it as the student's own unix
account (``python -m gridhub.hub.masterclass SRC HOME``), never as root inside a home
the student controls; container images can run the same command at start-up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

MARKER = Path(".gridhub") / "masterclass-copied"


def copy_notebooks_once(src: str | Path, home: str | Path) -> list[str]:
    src, home = Path(src), Path(home)
    marker = home / MARKER
    if marker.exists() or not src.is_dir():
        return []
    copied = []
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not item.is_file():
            continue
        dest = home / rel
        if dest.exists() or dest.is_symlink():
            continue  # never over what the student has
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, dest)
        copied.append(str(rel))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("\n".join(copied) + "\n")
    return copied


def copy_as_user(
    src: str | Path,
    home: str | Path,
    uid: int,
    gid: int,
    timeout: float = 60,
    python: str | None = None,
) -> None:
    """Run the copy in a child process with the student's uid/gid."""
    subprocess.run(
        [python or sys.executable, "-m", "gridhub.hub.masterclass", str(src), str(home)],
        user=uid,
        group=gid,
        extra_groups=[],
        check=True,
        timeout=timeout,
        cwd="/",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m gridhub.hub.masterclass SRC HOME", file=sys.stderr)
        return 2
    copied = copy_notebooks_once(args[0], args[1])
    print(f"masterclass: copied {len(copied)} file(s) into {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
