"""Every shipped notebook, executed headless against a DIRAC-backed cluster.

The kernel gets the facility's gateway settings the way a notebook server in
the facility does (DASK_GATEWAY__* in its environment) and the shipped samples
from ``gridhub-samples fetch`` (once per session, into a tmp dir). The AGC
notebook's histograms are compared with agc_reference.py, an independent
plain uproot + numpy computation on the same files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import uproot
from agc_reference import compute as reference_compute
from agc_reference import load_fileset as reference_fileset
from gateway_fixtures import PASSWORD
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    dest = tmp_path_factory.mktemp("data")
    t0 = time.monotonic()
    subprocess.run([str(VENV_BIN / "gridhub-samples"), "fetch", str(dest)], check=True)
    print(f"gridhub-samples fetch: {time.monotonic() - t0:.1f} s")
    assert (dest / "fileset.json").is_file()
    return dest


def kernel_env(facility, user: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_GATEWAY__")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        # the API as a notebook reaches it (through Traefik when the fixture has it)
        DASK_GATEWAY__ADDRESS=getattr(facility, "public_url", None) or facility.gateway.url,
        DASK_GATEWAY__PROXY_ADDRESS=f"gateway://127.0.0.1:{facility.traefik.dask_port}",
        DASK_GATEWAY__AUTH__TYPE="basic",
        # dashboard links relative to the user's page, as the hub sets it
        DASK_GATEWAY__PUBLIC_ADDRESS="/services/dask-gateway",
        DASK_GATEWAY__AUTH__KWARGS__USERNAME=user,
        DASK_GATEWAY__AUTH__KWARGS__PASSWORD=PASSWORD,
        GRIDHUB_DATA_DIR=str(data_dir),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    env.update(extra)
    return env


def run_notebook(path: Path, env: dict[str, str], out_dir: Path, timeout: int = 420):
    """Execute in the notebook's folder; write the executed copy to out_dir."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.monotonic()
    try:
        client.execute(env=env)
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
    elapsed = time.monotonic() - t0
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, errors
    print(f"{path.relative_to(NOTEBOOKS)}: {elapsed:.1f} s")
    return nb, elapsed


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            for kind in ("text/plain", "text/markdown"):
                if kind in o.get("data", {}):
                    parts.append(o["data"][kind])
    return "\n".join(parts)


def images_of(nb) -> int:
    return sum(
        "image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", [])
    )


def user_clusters(facility, user: str):
    return facility.client(user).list_clusters()


@pytest.fixture(scope="module")
def sidebar_cluster(dirac_facility):
    """What NEW in the Dask sidebar leaves: a running cluster with 2 workers."""
    gateway = dirac_facility.client("nb-alice")
    cluster = gateway.new_cluster()
    cluster.scale(2)
    client = cluster.get_client()
    client.wait_for_workers(2, timeout=180)
    client.close()
    yield cluster
    cluster.shutdown()


def test_getting_started_makes_its_own_cluster_and_stops_it(dirac_facility, sample_data, tmp_path):
    assert not user_clusters(dirac_facility, "nb-bob")
    env = kernel_env(dirac_facility, "nb-bob", sample_data)
    nb, _ = run_notebook(NOTEBOOKS / "00-getting-started.ipynb", env, tmp_path)
    out = text_of(nb)
    assert "started " in out and "worker(s) connected" in out
    assert "200 events" in out  # the ttbar sample opened through gridhub.data
    # the dashboard link, shown as a link relative to the page (it opens in the browser)
    assert re.search(r"\]\(/services/dask-gateway/clusters/[^/)]+/status\)", out), out
    # the plot of what the workers computed (all 16M numbers fall in the range)
    assert "16000000 entries histogrammed on the cluster" in out
    assert images_of(nb) == 1
    deadline = time.monotonic() + 60
    while user_clusters(dirac_facility, "nb-bob") and time.monotonic() < deadline:
        time.sleep(1)
    assert not user_clusters(dirac_facility, "nb-bob"), "the notebook's cluster was shut down"


@pytest.mark.parametrize("name", ["01-dimuon.ipynb", "02-higgs-4l.ipynb"])
def test_masterclass(dirac_facility, sidebar_cluster, sample_data, tmp_path, name):
    env = kernel_env(dirac_facility, "nb-alice", sample_data)
    nb, elapsed = run_notebook(NOTEBOOKS / "masterclass" / name, env, tmp_path)
    out = text_of(nb)
    assert f"computing on {sidebar_cluster.name}" in out  # the sidebar's cluster
    assert "Data:" in out and ("shipped sample" in out or "online" in out)
    assert images_of(nb) >= 1
    if name.startswith("01"):
        assert "2304 events" in out or "online" in out
    else:
        assert "2421 events" in out or "online" in out
    assert elapsed < 240


# the branches agc.TtbarAnalysis reads: the lepton selection, the jets and the b-tag
AGC_BRANCHES = {
    "nElectron", "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "nMuon", "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_jetId", "Jet_btagDeepFlavB",
}  # fmt: skip


def test_agc_dask_mode_reads_only_the_branches_it_uses(sample_data):
    """agc.run_dask computes an optimised graph: the tasks the scheduler gets
    read (uproot's common_keys of each from-uproot task) only the branches the
    analysis uses, not the file's 654 (issue 21: dask-awkward 2025.3 on dask
    2026.8 could not optimise, so every branch was read)."""
    import dask
    import dask_awkward as dak

    sys.path.insert(0, str(NOTEBOOKS / "agc-ttbar"))
    import agc

    sample = sample_data / "nano_tt_v12.root"
    fileset = {"ttbar": {"files": {str(sample): "Events"}, "metadata": {"xsec": 1.0, "nevts": 200}}}
    with uproot.open(sample) as f:
        assert len(f["Events"].keys()) > 600
    # what dask-awkward's column projection says the analysis needs
    lazy = [agc.TtbarAnalysis().process(ev) for ev in agc.dask_events(fileset).values()]
    (needed,) = dak.necessary_columns(*lazy).values()
    assert set(needed) == AGC_BRANCHES
    # what run_dask hands the scheduler (a local synchronous one here)
    graphs = []

    def scheduler(dsk, keys, **kwargs):
        graphs.append(dsk)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        out = agc.run_dask(fileset)
    assert out["nevents"] == {"ttbar": 200}
    (dsk,) = graphs
    read = [
        set(task.func.common_keys)
        for key, task in dict(dsk).items()
        if "from-uproot" in str(key) and hasattr(getattr(task, "func", None), "common_keys")
    ]
    assert read, "no from-uproot task in the computed graph"
    assert all(keys == AGC_BRANCHES for keys in read), read


@pytest.fixture(scope="module")
def agc_reference(sample_data):
    return reference_compute(reference_fileset(sample_data / "fileset.json"))


# processor.Runner, and coffea's dask mode (NanoEventsFactory(...).events() +
# dask.compute), on the same sidebar cluster: the same histograms
@pytest.mark.parametrize("mode", ["processor", "dask"])
def test_agc_ttbar_matches_an_independent_computation(
    dirac_facility, sidebar_cluster, sample_data, agc_reference, tmp_path, mode
):
    out_dir = tmp_path / "agc-output"
    env = kernel_env(
        dirac_facility, "nb-alice", sample_data, AGC_OUTPUT_DIR=str(out_dir), AGC_MODE=mode
    )
    folder = NOTEBOOKS / "agc-ttbar"
    before = {p for p in folder.rglob("*") if "__pycache__" not in p.parts}
    nb, elapsed = run_notebook(folder / "ttbar_analysis.ipynb", env, tmp_path)
    out = text_of(nb)
    # everything it writes goes to AGC_OUTPUT_DIR; the notebook's folder (the
    # image's examples) stays as it is
    after = {p for p in folder.rglob("*") if "__pycache__" not in p.parts}
    assert after == before, sorted(map(str, after - before))
    assert {p.name for p in (out_dir / "figures").iterdir()} >= {"pulls.pdf"}
    assert "using shipped samples" in out
    assert f"{mode} mode: 240 events" in out
    assert f"{sidebar_cluster.name} -" in out  # computed on the sidebar's cluster
    assert "mu = 1.000" in out
    assert images_of(nb) >= 3

    got = json.loads((out_dir / "histograms.json").read_text())
    assert got["nevents"] == {"ttbar": 200, "dy": 40}
    ref = agc_reference
    empty = {"sumw": [0.0] * 27, "entries": [0] * 27}
    keys = set(got["histograms"]) | set(ref)
    assert {"4j1b/ttbar/nominal", "4j2b/ttbar/nominal", "4j2b/ttbar/pt_scale_up"} <= keys
    assert sum(ref["4j2b/ttbar/nominal"]["entries"]) > 0
    for key in sorted(keys):
        g, r = got["histograms"].get(key, empty), ref.get(key, empty)
        assert g["entries"] == r["entries"], key
        np.testing.assert_allclose(g["sumw"], r["sumw"], rtol=1e-5, atol=1e-6, err_msg=key)
    # the ROOT file (uproot) holds the same histograms, under the AGC reference's names
    with uproot.open(out_dir / "histograms.root") as f:
        names = {k.partition(";")[0] for k in f.keys()}
        # ... and per region the pseudodata the cabinetry-driven fit uses: the nominal sum
        for region in ("4j1b", "4j2b"):
            nominal = [
                g["sumw"]
                for k, g in got["histograms"].items()
                if k.startswith(f"{region}/") and k.endswith("/nominal")
            ]
            np.testing.assert_allclose(
                f[f"{region}_pseudodata"].values(flow=True), np.sum(nominal, axis=0), rtol=1e-12
            )
        names -= {"4j1b_pseudodata", "4j2b_pseudodata"}
        assert len(names) == len(got["histograms"]), sorted(names)
        for key, g in got["histograms"].items():
            region, process, variation = key.split("/")
            name = f"{region}_{process}" + ("" if variation == "nominal" else f"_{variation}")
            h = f[name]
            assert h.classname == "TH1D", name
            np.testing.assert_allclose(h.values(flow=True), g["sumw"], rtol=1e-12, err_msg=name)
            np.testing.assert_allclose(h.variances(flow=True), g["sumw2"], rtol=1e-12, err_msg=name)
            np.testing.assert_allclose(h.axis().edges(), got["bins"], rtol=1e-12, err_msg=name)
    # every variation the analysis defines was filled for ttbar in both regions
    for region in ("4j1b", "4j2b"):
        for var in ("nominal", "pt_scale_up", "pt_scale_down", "btag_var_3_down"):
            assert f"{region}/ttbar/{var}" in got["histograms"]
    print(f"AGC notebook, {mode} mode: {elapsed:.1f} s")
