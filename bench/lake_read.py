"""Reading AGC inputs from a local file vs through an XCache, cold and warm.

    .venv/bin/python bench/lake_read.py [--files 4] [--events-per-file 100000]

Real XRootD on loopback (tests/integration/lake_fixtures.py: Debian's xrootd
5.5 as origin and as XCache, pss + pfc; needs root for `unshare -m`, as the
integration tests do). The inputs are bench/agc_throughput.py's (the shipped
ttbar sample replicated to N-event NanoAOD-like TTrees), served by the origin
under /public. All in one process, on the same files, one core:

  local       the AGC selection (agc_throughput's plain uproot + awkward) on
              the local files
  xcache-cold the same over root:// through a fresh XCache (every block
              fetched from the origin)
  xcache-warm the same again (served from the cache's disk)

plus the cache's raw read bandwidth (xrdcp of every file to /dev/null, warm).
Prints events/s and the ratios to local; writes JSON to
bench/results/lake_read-<time>.json. The issue's goal: warm >= 0.9 of local.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

import agc_throughput  # noqa: E402  (the inputs and the selection)
from lake_fixtures import RUN_AS, TokenIssuer, XRootDServer  # noqa: E402


def timed_read(fileset: dict) -> tuple[float, int]:
    wall, _cpu, n, _hists = agc_throughput.run_local_awkward(fileset)
    return wall, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--events-per-file", type=int, default=100_000)
    ap.add_argument("--data", type=Path, default=None, help="samples dir (gridhub-samples fetch)")
    args = ap.parse_args()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="gridhub-lake-bench-"))
    shutil.chown(work, RUN_AS, RUN_AS)
    servers: list[XRootDServer] = []
    issuer = TokenIssuer().start()
    try:
        data_dir = args.data or work / "samples"
        if not (data_dir / "nano_tt_v12.root").exists():
            from gridhub.samples import fetch

            fetch(data_dir)
        export = work / "export"
        local = agc_throughput.build_inputs(
            data_dir / "nano_tt_v12.root", export / "public", args.events_per_file, args.files
        )
        for p in [export, *export.rglob("*")]:
            shutil.chown(p, RUN_AS, RUN_AS)
        (work / "origin").mkdir()
        origin = XRootDServer(work / "origin", export, issuer).start()
        servers.append(origin)
        token = issuer.token("storage.read:/", sub="xcache", lifetime=3600)
        (work / "cache").mkdir()
        cache = XRootDServer(work / "cache", export, issuer, origin=origin, origin_token=token)
        servers.append(cache.start())
        # the clients trust the test CA (the TLS that both servers ask for)
        os.environ["X509_CERT_DIR"] = str(cache.ca_dir)
        spec = local["ttbar"]
        names = [Path(p).name for p in spec["files"]]
        remote = {
            "ttbar": {
                **spec,
                "files": {cache.url(f"/public/{n}"): "Events" for n in names},
            }
        }
        size = sum(Path(p).stat().st_size for p in spec["files"])

        timed_read(
            {"ttbar": {**spec, "files": dict(list(spec["files"].items())[:1])}}
        )  # imports and page cache
        rows = {}
        rows["local"] = timed_read(local)
        rows["xcache-cold"] = timed_read(remote)
        rows["xcache-warm"] = timed_read(remote)
        t0 = time.perf_counter()
        for url in remote["ttbar"]["files"]:
            subprocess.run(["xrdcp", "-f", "-s", url, "/dev/null"], check=True, timeout=600)
        bandwidth = size / (time.perf_counter() - t0)
    finally:
        for s in reversed(servers):
            s.stop()
        issuer.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = rows["local"][1] / rows["local"][0]
    results = []
    print(f"\n{'run':14s} {'events':>9s} {'wall s':>8s} {'ev/s':>10s} {'/local':>7s}")
    for name, (wall, n) in rows.items():
        rate = n / wall
        results.append({"run": name, "events": n, "seconds": wall, "events_per_s": rate,
                        "ratio_to_local": rate / base})  # fmt: skip
        print(f"{name:14s} {n:9d} {wall:8.2f} {rate:10.0f} {rate / base:7.2f}")
    print(
        f"XCache warm read bandwidth (xrdcp): {bandwidth / 1e6:.0f} MB/s over {size / 1e6:.0f} MB"
    )
    out = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": args.files,
        "events_per_file": args.events_per_file,
        "bytes": size,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": results,
        "xcache_warm_bytes_per_s": bandwidth,
    }
    print(f"load average before {load_before[0]:.2f}, after {out['load_after'][0]:.2f}")
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (results_dir / f"lake_read-{stamp}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
