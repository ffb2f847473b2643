"""Prepared notebooks into a user's home, once: a masterclass's notebooks for a
student, the facility's examples (getting-started, AGC) for a physicist.

``copy_once(name, src, home)`` copies every file of `src` that is missing in
`home` and records a marker ``.gridhub/<name>-copied``; once the marker exists
nothing of `name` is copied again, so a user's edits (or deletions) are never
undone.  The hub runs it as the user's own unix account (``python -m
gridhub.hub.homecopy NAME SRC HOME``), never as root inside a home the user
controls; containers run the same command at start-up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

MASTERCLASS = "masterclass"
EXAMPLES = "examples"


def marker(name: str) -> Path:
    return Path(".gridhub") / f"{name}-copied"


def copy_once(name: str, src: str | Path, home: str | Path) -> list[str]:
    src, home = Path(src), Path(home)
    done = home / marker(name)
    if done.exists() or not src.is_dir():
        return []
    copied = []
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not item.is_file():
            continue
        dest = home / rel
        if dest.exists() or dest.is_symlink():
            continue  # never over what the user has
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, dest)
        copied.append(str(rel))
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text("\n".join(copied) + "\n")
    return copied


def copy_as_user(
    name: str,
    src: str | Path,
    home: str | Path,
    uid: int,
    gid: int,
    timeout: float = 60,
    python: str | None = None,
) -> None:
    """Run the copy in a child process with the user's uid/gid."""
    subprocess.run(
        [python or sys.executable, "-m", "gridhub.hub.homecopy", name, str(src), str(home)],
        user=uid,
        group=gid,
        extra_groups=[],
        check=True,
        timeout=timeout,
        cwd="/",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not all(args):
        # (an empty SRC, e.g. an unset variable in a start command, would be "."
        # and copy the working directory)
        print(f"usage: python -m gridhub.hub.homecopy NAME SRC HOME (got {args})", file=sys.stderr)
        return 2
    name, src, home = args
    copied = copy_once(name, src, home)
    print(f"homecopy: copied {len(copied)} file(s) of {name} into {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
