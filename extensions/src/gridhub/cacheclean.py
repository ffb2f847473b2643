"""The analysis cache's cleaner: removes expired objects (docs/data-lake.md).

    python3 -m gridhub.cacheclean --root /srv/lake/store/cache \\
        [--default 7d] [--maximum 30d] [--group-quota 50g] [--every 600]

It works on the origin's file system, as the user the origin writes as (the
cache's files are that user's): no token, no network, nothing of the hub.
An object expires at the time its ``.expires`` sidecar names, capped at
``mtime + maximum`` (gridhub.cachepolicy.expires_at); the sidecar goes with it.
With ``--group-quota`` a group area above it loses the objects that expire
soonest until it fits (a soft quota: checked on each pass, not at write time).
Standard library only (it runs in the lake image).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gridhub.cachepolicy import (
    AREA_LEAF,
    DEFAULT_EXPIRY,
    EXPIRES_SUFFIX,
    MAX_EXPIRY,
    expires_at,
    parse_duration,
    parse_sidecar,
)

log = logging.getLogger("gridhub.cacheclean")

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str) -> int:
    """Bytes in ``10g``, ``500m``, ``4096``."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)] if unit else text
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"not a size: {value!r} (bytes, or a number with k, m, g or t)")
    return int(number) * _SIZE_UNITS[unit]


@dataclass
class Entry:
    path: Path
    size: int
    expires: float


def _entries(area: Path, default: int, maximum: int) -> list[Entry]:
    out = []
    for dirpath, _dirs, files in os.walk(area):
        for name in files:
            if name.endswith(EXPIRES_SUFFIX):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # removed meanwhile (a user's delete)
            try:
                declared = parse_sidecar(Path(f"{path}{EXPIRES_SUFFIX}").read_text())
            except (FileNotFoundError, UnicodeDecodeError):
                declared = None
            out.append(Entry(path, st.st_size, expires_at(st.st_mtime, declared, default, maximum)))
    return out


def _remove(entry: Entry, why: str) -> None:
    for p in (entry.path, Path(f"{entry.path}{EXPIRES_SUFFIX}")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    log.info("removed %s (%d bytes): %s", entry.path, entry.size, why)


def _orphans(area: Path, now: float, maximum: int) -> None:
    """Sidecars whose object is gone, once older than the maximum; empty folders."""
    for dirpath, dirs, files in os.walk(area, topdown=False):
        for name in files:
            if name.endswith(EXPIRES_SUFFIX):
                side = Path(dirpath) / name
                obj = Path(str(side)[: -len(EXPIRES_SUFFIX)])
                try:
                    if not obj.exists() and side.stat().st_mtime + maximum < now:
                        side.unlink()
                except FileNotFoundError:
                    pass
        if Path(dirpath) != area and not dirs and not files:
            try:
                os.rmdir(dirpath)  # fails harmlessly if a writer just put a file there
            except OSError:
                pass


def clean(
    root: Path,
    *,
    default: int,
    maximum: int,
    group_quota: int | None = None,
    now: float | None = None,
) -> list[Path]:
    """One pass over ``root`` (the origin's ``/cache``); returns what it removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    for kind in ("users", "groups"):
        base = root / kind
        if not base.is_dir():
            continue
        for owner in sorted(base.iterdir()):
            area = owner / AREA_LEAF
            if not area.is_dir():
                continue
            entries = _entries(area, default, maximum)
            live = []
            for e in entries:
                if e.expires <= now:
                    _remove(e, f"expired at {time.strftime('%FT%TZ', time.gmtime(e.expires))}")
                    removed.append(e.path)
                else:
                    live.append(e)
            if kind == "groups" and group_quota is not None:
                used = sum(e.size for e in live)
                for e in sorted(live, key=lambda e: e.expires):
                    if used <= group_quota:
                        break
                    _remove(e, f"group {owner.name} over its quota of {group_quota} bytes")
                    removed.append(e.path)
                    used -= e.size
            _orphans(area, now, maximum)
    return removed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="gridhub-cacheclean", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="the origin's /cache folder")
    ap.add_argument("--default", default=DEFAULT_EXPIRY, help="expiry of objects naming none")
    ap.add_argument("--maximum", default=MAX_EXPIRY, help="no object lives longer")
    ap.add_argument("--group-quota", help="bytes per group area (50g); unset: no quota")
    ap.add_argument("--every", type=int, default=0, help="repeat every N s (0: once)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(name)s] %(message)s")
    default, maximum = parse_duration(args.default), parse_duration(args.maximum)
    quota = parse_size(args.group_quota) if args.group_quota else None
    while True:
        try:
            removed = clean(args.root, default=default, maximum=maximum, group_quota=quota)
            log.info("pass over %s: %d objects removed", args.root, len(removed))
        except OSError as exc:  # a pass that failed is retried at the next one
            log.error("pass over %s failed: %s", args.root, exc)
        if args.every <= 0:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
