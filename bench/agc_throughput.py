"""AGC ttbar processing: events/s per worker core on the facility's cluster
against the same selection run locally on one core with plain uproot + awkward.

    .venv/bin/python bench/agc_throughput.py [--files 16] [--events-per-file 100000] [--workers 2]

Inputs: the shipped nano_tt_v12.root (200 ttbar NanoAOD events, fetched with
gridhub-samples) replicated to a TTree of N events (Jet, Electron, Muon
collections with all their branches, NanoAOD's layout, 10k-event baskets) and
copied --files times, so each run takes tens of seconds. All runs, in one
process, on the same files:

  local-awkward  plain uproot.iterate + awkward + numpy histograms, 1 core
  local-coffea   notebooks/agc-ttbar/agc.py with coffea's IterativeExecutor, 1 core
  local-dask     the same with coffea's DaskExecutor on a dask LocalCluster of
                 one 1-thread worker process: what Dask itself costs, so that
                 facility / local-dask is what GridHub adds (the worker runs
                 without the nanny's MALLOC_TRIM_THRESHOLD_, as the facility's)
  facility       the same coffea processor with DaskExecutor on a gateway cluster
                 whose workers are DIRAC jobs (embedded DiracX + local site,
                 Traefik and the reverse path), --workers workers of 1 core
  facility-dask  then, on the same cluster and files, coffea's dask mode
                 (agc.run_dask: NanoEventsFactory(mode="dask").events() +
                 dask.compute, the notebook's AGC_MODE=dask)

Two figures per run: events per wall-second per core, and events per CPU-second
of the processes doing the work (this process for the local runs; the worker
processes, read with psutil on each worker, for the facility). On a 2-core
machine the scheduler, gateway, Traefik and this client share the cores with
the workers, so the default is 1 worker, and the CPU-second figure is the one
that says what a worker core does whatever else the machine runs.

Prints a table and writes JSON to bench/results/agc_throughput-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "notebooks" / "agc-ttbar"))

from processes import facility_tls  # noqa: E402

# the facility's self-signed certificate trusted via SSL_CERT_FILE, before
# aiohttp (imported by uproot/fsspec and dask-gateway) builds its SSL context
facility_tls()

warnings.filterwarnings("ignore", message="Missing cross-reference")
warnings.filterwarnings("ignore", message="Branch .* already exists")

import agc  # noqa: E402

COLLECTIONS = ("Jet", "Electron", "Muon")
XSEC = 729.84
BASKET = 10_000  # events per TBasket, of the order NanoAOD files have


# ------------------------------------------------------------------ inputs
def build_inputs(sample: Path, dest: Path, events_per_file: int, files: int) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    first = dest / "ttbar_000.root"
    if not first.exists():
        with uproot.open(sample) as f:
            tree = f["Events"]
            names = [
                k
                for k in tree.keys()
                if k.split("_", 1)[0] in COLLECTIONS and not k.startswith("n")
            ]
            arrays = tree.arrays(names)
        reps = -(-events_per_file // len(arrays))
        big = ak.concatenate([arrays] * reps)[:events_per_file]
        # a TTree as NanoAOD has (since uproot 5.7 assigning a dict writes an
        # RNTuple, whose reading is another code path): one record per
        # collection, so its branches Jet_pt, ... share one counter nJet
        out = {
            coll: ak.zip({n.split("_", 1)[1]: big[n] for n in names if n.startswith(coll + "_")})
            for coll in COLLECTIONS
        }
        out["run"] = np.ones(events_per_file, dtype=np.uint32)
        out["luminosityBlock"] = (np.arange(events_per_file) // 1000).astype(np.uint32)
        out["event"] = np.arange(events_per_file, dtype=np.uint64)
        with uproot.recreate(first) as f:
            tree = None
            for start in range(0, events_per_file, BASKET):  # one basket per branch each
                part = {k: v[start : start + BASKET] for k, v in out.items()}
                if tree is None:
                    tree = f.mktree("Events", part)
                else:
                    tree.extend(part)
    for i in range(1, files):
        p = dest / f"ttbar_{i:03d}.root"
        if not p.exists():
            shutil.copyfile(first, p)
    paths = [str(dest / f"ttbar_{i:03d}.root") for i in range(files)]
    return {
        "ttbar": {
            "files": dict.fromkeys(paths, "Events"),
            "metadata": {"process": "ttbar", "xsec": XSEC, "nevts": events_per_file * files},
        }
    }


# ------------------------------------------------------------------ plain uproot + awkward
BRANCHES = [
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_jetId", "Jet_btagDeepFlavB",
]  # fmt: skip
EDGES = np.linspace(agc.BINS[1], agc.BINS[2], agc.BINS[0] + 1)


def awkward_chunk(a, weight: float, hists: dict) -> None:
    el_ok = (a.Electron_pt > 30) & (abs(a.Electron_eta) < 2.1)
    el_ok = el_ok & (a.Electron_cutBased == 4) & (a.Electron_sip3d < 4)
    mu_ok = (a.Muon_pt > 30) & (abs(a.Muon_eta) < 2.1) & a.Muon_tightId
    mu_ok = mu_ok & (a.Muon_sip3d < 4) & (a.Muon_pfRelIso04_all < 0.15)
    n_lep = ak.sum(el_ok, axis=1) + ak.sum(mu_ok, axis=1)

    def fill(key, x, w):
        h = np.histogram(x, bins=EDGES, weights=np.broadcast_to(w, x.shape))[0]
        hists[key] = hists.get(key, 0) + h

    for var, jes in agc.JES.items():
        pt = a.Jet_pt * jes
        ok = (pt > 30) & (abs(a.Jet_eta) < 2.4) & ((a.Jet_jetId & 4) != 0)
        jets = ak.zip(
            {
                "pt": pt[ok],
                "eta": a.Jet_eta[ok],
                "phi": a.Jet_phi[ok],
                "m": a.Jet_mass[ok],
                "b": a.Jet_btagDeepFlavB[ok],
            }
        )
        n_b = ak.sum(jets.b >= agc.B_TAG_THRESHOLD, axis=1)
        base = (n_lep == 1) & (ak.num(jets) >= 4) & (n_b >= 1)
        j1 = jets[base & (n_b == 1)]
        ht = ak.to_numpy(ak.sum(j1.pt, axis=1))
        j2 = jets[base & (n_b >= 2)]
        tri = ak.combinations(j2, 3, fields=["a", "b", "c"])
        px = py = pz = e = 0
        for k in ("a", "b", "c"):
            j = tri[k]
            jx, jy, jz = j.pt * np.cos(j.phi), j.pt * np.sin(j.phi), j.pt * np.sinh(j.eta)
            px, py, pz = px + jx, py + jy, pz + jz
            e = e + np.sqrt(jx**2 + jy**2 + jz**2 + j.m**2)
        maxb = np.maximum(tri.a.b, np.maximum(tri.b.b, tri.c.b))
        has_b = maxb >= agc.B_TAG_THRESHOLD
        tpt = np.hypot(px, py)[has_b]
        mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))[has_b]
        best = ak.argmax(tpt, axis=1, keepdims=True)
        mbjj = ak.to_numpy(ak.flatten(mass[best], axis=1))
        for region, x, jets_r in (("4j1b", ht, j1), ("4j2b", mbjj, j2)):
            fill(f"{region}/{var}", x, weight)
            if var != "nominal":
                continue
            for i in range(agc.N_BTAG_VARS):
                r = 0.075 * ak.to_numpy(jets_r.pt[:, i]) / 50.0
                fill(f"{region}/btag_var_{i}_up", x, weight * (1 + r))
                fill(f"{region}/btag_var_{i}_down", x, weight * (1 - r))


def run_local_awkward(fileset: dict) -> tuple[float, float, int, dict]:
    spec = fileset["ttbar"]
    weight = XSEC * agc.LUMI / spec["metadata"]["nevts"]
    hists: dict = {}
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for path in spec["files"]:
        with uproot.open(path) as f:
            for a in f["Events"].iterate(BRANCHES, step_size=100_000):
                awkward_chunk(a, weight, hists)
                n += len(a)
    return time.perf_counter() - t0, time.process_time() - c0, n, hists


# ------------------------------------------------------------------ coffea
def run_coffea(fileset: dict, executor, chunksize: int) -> tuple[float, float, int, dict]:
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    NanoAODSchema.warn_missing_crossrefs = False
    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=chunksize)
    t0, c0 = time.perf_counter(), time.process_time()
    out = runner(fileset, processor_instance=agc.TtbarAnalysis(), treename="Events")
    return time.perf_counter() - t0, time.process_time() - c0, sum(out["nevents"].values()), out


def _process_cpu_seconds() -> float:
    """CPU seconds (user + system) of the calling process: run on each worker."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _malloc_trim_threshold() -> str | None:
    """The worker's MALLOC_TRIM_THRESHOLD_ (glibc reads it at process start)."""
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def run_local_dask(fileset: dict, one: dict, chunksize: int):
    import dask
    from coffea import processor
    from distributed import Client, LocalCluster

    # Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which
    # also pins glibc's mmap threshold: every large numpy buffer is unmapped
    # when freed and page-faulted in again, about twice the CPU on this
    # workload (docs/performance.md, section 5). The facility's workers run
    # without a nanny, so without it: unset here to compare like with like.
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with (
        dask.config.set(no_trim),
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        ex = processor.DaskExecutor(client=client, status=False)
        run_coffea(one, ex, chunksize)  # warm-up, as on the facility
        before = client.run(_process_cpu_seconds)
        elapsed, _, n, out = run_coffea(fileset, ex, chunksize)
        after = client.run(_process_cpu_seconds)
        trim = sorted(set(client.run(_malloc_trim_threshold).values()), key=str)
    return elapsed, sum(after[w] - before[w] for w in before), n, out, trim


def nominal_counts_coffea(out) -> dict:
    h = out["entries"]
    return {
        r: int(h[dict(region=r, process="ttbar", variation="nominal")].sum(flow=False))
        for r in agc.REGIONS
    }


def run_dask_mode(client, fileset: dict, one: dict, steps: int) -> tuple[float, float, int, dict]:
    """coffea's dask mode on the client's cluster: (wall s, workers' CPU s, events, output).
    steps: partitions per file, as many as the processor's chunks."""
    import dask

    with dask.config.set(scheduler=client):
        agc.run_dask(one, steps_per_file=steps)  # warm-up: dask-awkward, dask-histogram
        before = client.run(_process_cpu_seconds)
        t0 = time.perf_counter()
        out = agc.run_dask(fileset, steps_per_file=steps)
        elapsed = time.perf_counter() - t0
        after = client.run(_process_cpu_seconds)
    cpu = sum(after[w] - before[w] for w in before)
    return elapsed, cpu, sum(out["nevents"].values()), out


def run_facility(fileset: dict, workers: int, chunksize: int, work: Path, steps: int):
    import cloudpickle
    from coffea import processor
    from gateway_fixtures import Facility
    from processes import EmbeddedDiracX, LocalSiteProcess

    cloudpickle.register_pickle_by_value(agc)
    diracx = EmbeddedDiracX(work / "diracx")
    diracx.start(timeout=180)
    site = LocalSiteProcess(diracx, work / "site", "--poll-interval", "0.2").start()
    facility = Facility(work / "facility", diracx, site)
    try:
        gateway = facility.client("bench")
        cluster = gateway.new_cluster()
        try:
            cluster.scale(workers)
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(workers, timeout=300)
            cores = sum(client.nthreads().values())
            # warm-up on one file: imports and the processor on the workers
            one = {
                "ttbar": {
                    **fileset["ttbar"],
                    "files": dict(list(fileset["ttbar"]["files"].items())[:1]),
                }
            }
            ex = processor.DaskExecutor(client=client, status=False)
            run_coffea(one, ex, chunksize)
            before = client.run(_process_cpu_seconds)
            elapsed, _, n, out = run_coffea(fileset, ex, chunksize)
            after = client.run(_process_cpu_seconds)
            cpu = sum(after[w] - before[w] for w in before)
            trim = sorted(set(client.run(_malloc_trim_threshold).values()), key=str)
            dask_mode = run_dask_mode(client, fileset, one, steps)
            client.close()
        finally:
            cluster.shutdown()
            gateway.close()
        return elapsed, cpu, n, out, cores, trim, dask_mode
    finally:
        facility.stop()
        site.stop()
        diracx.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--events-per-file", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunksize", type=int, default=100_000)
    ap.add_argument("--data", type=Path, default=None, help="samples dir (gridhub-samples fetch)")
    ap.add_argument("--skip-facility", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="gridhub-agc-bench-"))
    data_dir = args.data or work / "samples"
    if not (data_dir / "nano_tt_v12.root").exists():
        from gridhub.samples import fetch

        fetch(data_dir)
    t0 = time.perf_counter()
    fileset = build_inputs(
        data_dir / "nano_tt_v12.root", work / "inputs", args.events_per_file, args.files
    )
    print(
        f"inputs: {args.files} x {args.events_per_file} events ({time.perf_counter() - t0:.0f} s)"
    )

    from coffea import processor

    rows = []
    # warm the page cache and imports once
    run_local_awkward(
        {"ttbar": {**fileset["ttbar"], "files": dict(list(fileset["ttbar"]["files"].items())[:1])}}
    )
    el, cpu, n, hists = run_local_awkward(fileset)
    rows.append(("local-awkward (uproot+awkward)", n, el, cpu, 1))
    executor = processor.IterativeExecutor(status=False)
    el, cpu, n, out = run_coffea(fileset, executor, args.chunksize)
    rows.append(("local-coffea (IterativeExecutor)", n, el, cpu, 1))
    ref_counts = nominal_counts_coffea(out)
    one = {
        "ttbar": {**fileset["ttbar"], "files": dict(list(fileset["ttbar"]["files"].items())[:1])}
    }
    el, cpu, n, dout, trim = run_local_dask(fileset, one, args.chunksize)
    malloc_trim = {"local-dask": trim}
    assert nominal_counts_coffea(dout) == ref_counts
    rows.append(("local-dask (LocalCluster, 1 worker)", n, el, cpu, 1))
    awk_sum = {r: float(hists[f"{r}/nominal"].sum()) for r in agc.REGIONS}
    coffea_sum = {
        r: float(out["hist"][dict(region=r, process="ttbar", variation="nominal")].sum().value)
        for r in agc.REGIONS
    }
    for r in agc.REGIONS:
        assert np.isclose(awk_sum[r], coffea_sum[r], rtol=1e-5), (r, awk_sum, coffea_sum)
    if not args.skip_facility:
        # the dask mode's partitions: as many per file as the processor's chunks
        steps = -(-args.events_per_file // args.chunksize)
        el, cpu, n, fout, cores, malloc_trim["facility"], dask_mode = run_facility(
            fileset, args.workers, args.chunksize, work, steps
        )
        assert nominal_counts_coffea(fout) == ref_counts
        rows.append((f"facility ({args.workers} DIRAC-job workers)", n, el, cpu, cores))
        el, cpu, n, dmout = dask_mode
        assert nominal_counts_coffea(dmout) == ref_counts
        rows.append(("facility-dask (coffea dask mode)", n, el, cpu, cores))

    awk_wall, awk_cpu = rows[0][1] / rows[0][2], rows[0][1] / rows[0][3]
    cof_wall, cof_cpu = rows[1][1] / rows[1][2], rows[1][1] / rows[1][3]
    head = ("run", "events", "wall s", "cpu s", "cores", "ev/s/core", "ev/cpu-s")
    dask_cpu = rows[2][1] / rows[2][3]
    ratios = ("wall/awk", "wall/cof", "cpu/awk", "cpu/cof", "cpu/dask")
    print("\n{:36s} {:>9s} {:>7s} {:>7s} {:>5s} {:>10s} {:>9s}".format(*head), *ratios)
    results = []
    for name, n, el, cpu, cores in rows:
        per_core, per_cpu = n / el / cores, n / cpu
        row = {
            "run": name,
            "events": n,
            "seconds": el,
            "cpu_seconds": cpu,
            "cores": cores,
            "events_per_s_per_core": per_core,
            "events_per_cpu_s": per_cpu,
            "wall_ratio_to_local_awkward": per_core / awk_wall,
            "wall_ratio_to_local_coffea": per_core / cof_wall,
            "cpu_ratio_to_local_awkward": per_cpu / awk_cpu,
            "cpu_ratio_to_local_coffea": per_cpu / cof_cpu,
            "cpu_ratio_to_local_dask": per_cpu / dask_cpu,
        }
        results.append(row)
        print(
            f"{name:36s} {n:9d} {el:7.1f} {cpu:7.1f} {cores:5d} {per_core:10.0f} {per_cpu:9.0f}"
            f" {row['wall_ratio_to_local_awkward']:8.2f} {row['wall_ratio_to_local_coffea']:8.2f}"
            f" {row['cpu_ratio_to_local_awkward']:7.2f} {row['cpu_ratio_to_local_coffea']:7.2f}"
            f" {row['cpu_ratio_to_local_dask']:8.2f}"
        )
    dask_over_processor = None
    if not args.skip_facility:
        proc, dmode = results[-2], results[-1]
        dask_over_processor = {
            "events_per_s_per_core": dmode["events_per_s_per_core"] / proc["events_per_s_per_core"],
            "events_per_cpu_s": dmode["events_per_cpu_s"] / proc["events_per_cpu_s"],
        }
        print("facility, dask mode / processor mode:", dask_over_processor)
    versions = {
        p: metadata.version(p)
        for p in (
            "coffea",
            "uproot",
            "awkward",
            "dask",
            "distributed",
            "dask-gateway",
            "dask-awkward",
            "dask-histogram",
            "numpy",
        )
    }
    print("selected (nominal):", ref_counts, "versions:", versions)
    print("workers' MALLOC_TRIM_THRESHOLD_:", malloc_trim, "load average:", os.getloadavg())
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    report = {
        "benchmark": "agc_throughput",
        "files": args.files,
        "events_per_file": args.events_per_file,
        "chunksize": args.chunksize,
        "results": results,
        "selected_nominal": ref_counts,
        "facility_dask_mode_over_processor_mode": dask_over_processor,
        "workers_malloc_trim_threshold": malloc_trim,
        "versions": versions,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }
    path = out_dir / f"agc_throughput-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("written", path)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
