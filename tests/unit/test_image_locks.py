"""Every image lock can be installed by the installer its image uses, without
network: the structure of images/*/requirements.txt and the Dockerfiles.

A cold build once failed where a warm cache hid it: Debian 12's pip 23.0.1
refuses a hashed lock in which one locked package asks for another with an
extra (pytest-cov -> coverage[toml]) and PyPI has a newer release of it than
the lock's (pypa/pip#9644, fixed in pip 23.3): a lock that installed
yesterday breaks today. So:

- each Dockerfile stage that installs a lock has first installed the pinned
  installer (images/installer.txt), not the base image's pip;
- that installer is pinned with hashes, at a version that handles extras in
  hash-checking mode whenever a lock needs it;
- each lock is closed: every requirement of every locked package (with the
  extras other locked packages ask for, markers evaluated for the images'
  Python 3.11 on x86_64 Linux) names a locked package at a version its
  specifier allows. Package metadata comes from the test venv, which is
  compiled from the same constraints (tests/requirements.txt), for every
  locked package installed there at the locked version.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
LOCKS = sorted(IMAGES.glob("*/requirements.txt"))
# the first pip that resolves `pkg[extra]` to a hashed `pkg==v` line (pypa/pip#9644)
PIP_EXTRAS_IN_HASH_MODE = Version("23.3")
# the images' interpreter: Debian 12's python3
ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)(\[[^\]]*\])?==([^\s\\;]+)(.*)$")


def parse_lock(path: Path) -> dict[str, Version]:
    """name -> pinned version; every pin must carry at least one hash."""
    pins: dict[str, Version] = {}
    text = path.read_text()
    for block in re.split(r"\n(?=\S)", text):
        first = block.splitlines()[0] if block.strip() else ""
        if not first or first.startswith("#"):
            continue
        m = PIN.match(first)
        assert m, f"{path.relative_to(ROOT)}: not a '==' pin: {first!r}"
        assert "--hash=sha256:" in block, f"{path.relative_to(ROOT)}: {m[1]} has no hash"
        pins[canonicalize_name(m[1])] = Version(m[3])
    assert pins, f"{path.relative_to(ROOT)} pins nothing"
    return pins


def installed(name: str, version: Version) -> md.Distribution | None:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return dist if Version(dist.version) == version else None


def requirements_with_extras(pins: dict[str, Version]) -> tuple[list[str], dict[str, set[str]]]:
    """Check the lock's closure; return the problems and, per locked package,
    the extras other locked packages ask of it."""
    extras: dict[str, set[str]] = {name: set() for name in pins}
    problems: list[str] = []
    todo = list(pins)
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name = todo.pop()
        key = (name, frozenset(extras[name]))
        if key in seen:
            continue
        seen.add(key)
        dist = installed(name, pins[name])
        if dist is None:
            continue  # no metadata here: not checked (the test below counts these)
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = [{**ENV, "extra": e} for e in ("", *extras[name])]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in wanted):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pins:
                problems.append(f"{name}=={pins[name]} needs {req} which is not locked")
                continue
            if not req.specifier.contains(pins[dep], prereleases=True):
                problems.append(f"{name}=={pins[name]} needs {req}, locked {dep}=={pins[dep]}")
            new = {canonicalize_name(e) for e in req.extras} - extras[dep]
            if new:
                extras[dep] |= new
                todo.append(dep)
    return problems, extras


def dockerfile_stages(path: Path) -> list[tuple[str, str | None, list[str]]]:
    """(name, parent stage, RUN/COPY lines) per stage."""
    stages: list[tuple[str, str | None, list[str]]] = []
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            stages.append((m[2] or f"#{len(stages)}", m[1], []))
        elif stages and re.match(r"(RUN|COPY)\s", line):
            stages[-1][2].append(line)
    return stages


def installer() -> Version:
    pins = parse_lock(IMAGES / "installer.txt")
    assert set(pins) == {"pip"}, pins
    return pins["pip"]


@pytest.mark.parametrize(
    "dockerfile", sorted(IMAGES.glob("*/Dockerfile")), ids=lambda p: p.parent.name
)
def test_every_lock_is_installed_by_the_pinned_installer(dockerfile: Path):
    if not (dockerfile.parent / "requirements.txt").exists():
        # an image of Debian packages alone (prometheus): then no pip at all
        assert "pip install" not in dockerfile.read_text(), f"{dockerfile}: pip without a lock"
        return
    has_installer: dict[str, bool] = {}
    installs = 0
    for name, parent, lines in dockerfile_stages(dockerfile):
        ready = has_installer.get(parent or "", False)
        for line in lines:
            if "-r /tmp/installer.txt" in line:
                assert "--require-hashes" in line, f"{dockerfile}: installer without hashes"
                ready = True
            elif re.search(r"pip install .*-r /tmp/\S+", line):
                installs += 1
                assert ready, (
                    f"{dockerfile.relative_to(ROOT)} stage {name}: installs a lock with the "
                    f"base image's pip, not images/installer.txt's: {line[:120]}"
                )
                assert "--require-hashes" in line, f"{dockerfile}: {line[:120]}"
        has_installer[name] = ready
    assert installs, f"{dockerfile} installs no lock"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.parent.name)
def test_lock_is_closed_and_installable(lock: Path):
    pins = parse_lock(lock)
    problems, extras = requirements_with_extras(pins)
    assert not problems, "\n".join(problems)
    checked = [n for n in pins if installed(n, pins[n])]
    # metadata for nearly all of it, or the check above proves little
    assert len(checked) >= 0.9 * len(pins), f"only {len(checked)}/{len(pins)} checked"
    asked_with_extras = sorted(n for n, e in extras.items() if e)
    if asked_with_extras:
        assert installer() >= PIP_EXTRAS_IN_HASH_MODE, (
            f"{lock.relative_to(ROOT)} has packages asked for with extras "
            f"({', '.join(asked_with_extras[:5])}...): pip {installer()} fails on them in "
            "hash-checking mode once PyPI has a newer release of one (pypa/pip#9644); "
            f"pin pip >= {PIP_EXTRAS_IN_HASH_MODE}"
        )
