"""Install the facility's sample data once: ``gridhub-samples fetch DEST``.

The files come from the package registry, never from the web at run time:

- coffea's source distribution (the version installed here) carries
  ``tests/samples/*.root``: small real NanoAOD files, among them
  ``nano_tt_v12.root`` (200 ttbar events) and ``nano_dimuon.root``;
- scikit-hep-testdata 0.3.12's wheel (the last release that still ships its
  files) carries ``uproot-HZZ.root`` and ``uproot-Zmumu.root``.

Only the ROOT files are kept. ``DEST/fileset.json`` is the AGC fileset of the
shipped NanoAOD samples: ``{process: {"files": {path: "Events"}, "metadata": {...}}}``.
A second run finds everything in place and downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

SKHEP_TESTDATA_VERSION = "0.3.12"

# member name inside the archive -> file name in DEST
COFFEA_FILES = (
    "nano_tt_v12.root",
    "nano_tt_v15.root",
    "nano_dy.root",
    "nano_dimuon.root",
)
SKHEP_FILES = (
    "uproot-HZZ.root",
    "uproot-Zmumu.root",
)

# The AGC fileset of the shipped samples. Cross-sections in pb (the AGC's
# ttbar value; Drell-Yan m_ll > 50 GeV at 13 TeV), nevts filled in from the files.
FILESET_PROCESSES: dict[str, dict[str, Any]] = {
    "ttbar": {
        "file": "nano_tt_v12.root",
        "metadata": {"process": "ttbar", "variation": "nominal", "xsec": 729.84},
    },
    "dy": {
        "file": "nano_dy.root",
        "metadata": {"process": "dy", "variation": "nominal", "xsec": 6077.22},
    },
}

FILESET_NAME = "fileset.json"


def _log(msg: str) -> None:
    print(f"gridhub-samples: {msg}", file=sys.stderr, flush=True)


def coffea_version() -> str:
    """The coffea version whose source distribution carries the samples."""
    try:
        return metadata.version("coffea")
    except metadata.PackageNotFoundError:
        raise SystemExit(
            "gridhub-samples: coffea is not installed; pass --coffea-version"
        ) from None


def pip_download(requirement: str, dest: Path, *, sdist: bool, python: str | None = None) -> Path:
    """Download one distribution with pip (the registry) into ``dest``; its path."""
    name = requirement.split("==")[0]
    cmd = [
        python or sys.executable, "-m", "pip", "download", "--no-deps",
        "--disable-pip-version-check", "-q", "-d", str(dest),
    ]  # fmt: skip
    # --no-binary NAME (not :all:) so pip can use wheels of the build backend
    # when it prepares the sdist's metadata: minutes faster.
    cmd += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    cmd.append(requirement)
    _log(f"pip download {requirement}")
    subprocess.run(cmd, check=True)
    norm = name.replace("-", "_").lower()
    found = [
        p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(norm + "_")
    ] or [p for p in dest.iterdir() if p.name.lower().startswith(name.lower())]
    if not found:
        raise RuntimeError(f"pip download {requirement} left nothing in {dest}")
    return max(found, key=lambda p: p.stat().st_mtime)


def _extract(archive: Path, wanted: Iterable[str], dest: Path) -> list[str]:
    """Copy the members whose base name is in ``wanted`` from a tar.gz or zip."""
    wanted = set(wanted)
    got: list[str] = []
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and "/samples/" in m.name:
                    data = tar.extractfile(m)
                    assert data is not None  # a regular file's member
                    _write(dest / base, data.read())
                    got.append(base)
    else:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                base = name.rsplit("/", 1)[-1]
                if base in wanted:
                    _write(dest / base, z.read(name))
                    got.append(base)
    missing = wanted - set(got)
    if missing:
        raise RuntimeError(f"{archive.name} lacks {sorted(missing)}")
    return got


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _num_entries(path: Path, tree: str = "Events") -> int | None:
    try:
        import uproot
    except ImportError:
        return None
    with uproot.open(path) as f:
        return int(f[tree].num_entries)


def write_fileset(dest: Path) -> Path:
    fileset = {}
    for process, spec in FILESET_PROCESSES.items():
        path = dest / spec["file"]
        meta = dict(spec["metadata"])
        n = _num_entries(path)
        if n is not None:
            meta["nevts"] = n
        # relative to the fileset's folder: the data volume can be mounted anywhere
        fileset[process] = {"files": {spec["file"]: "Events"}, "metadata": meta}
    out = dest / FILESET_NAME
    _write(out, (json.dumps(fileset, indent=2) + "\n").encode())
    return out


def fetch(dest: Path, *, coffea: str | None = None, python: str | None = None) -> Path:
    """Put the sample ROOT files and fileset.json in ``dest``. Idempotent."""
    dest = Path(dest).expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gridhub-samples-") as tmp:
        tmpdir = Path(tmp)
        if not all((dest / f).is_file() for f in COFFEA_FILES):
            sdist = pip_download(
                f"coffea=={coffea or coffea_version()}", tmpdir, sdist=True, python=python
            )
            _extract(sdist, COFFEA_FILES, dest)
        if not all((dest / f).is_file() for f in SKHEP_FILES):
            wheel = pip_download(
                f"scikit-hep-testdata=={SKHEP_TESTDATA_VERSION}", tmpdir, sdist=False,
                python=python,
            )  # fmt: skip
            _extract(wheel, SKHEP_FILES, dest)
    if not (dest / FILESET_NAME).is_file():
        write_fileset(dest)
    _log(f"samples in {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridhub-samples", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download (once) the sample files into DEST")
    f.add_argument("dest", type=Path, help="data directory, e.g. /srv/data")
    f.add_argument("--coffea-version", help="default: the installed coffea's version")
    f.add_argument("--python", help="python whose pip downloads (default: this one)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        dest = fetch(args.dest, coffea=args.coffea_version, python=args.python)
        print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
