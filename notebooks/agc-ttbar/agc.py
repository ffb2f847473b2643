"""The IRIS-HEP Analysis Grand Challenge CMS ttbar analysis as a coffea processor.

Follows the AGC reference implementation (analyses/cms-open-data-ttbar):

- exactly one tight lepton: electron (cutBased == 4, sip3d < 4) or muon
  (tightId, sip3d < 4, pfRelIso04_all < 0.15), pT > 30 GeV, |eta| < 2.1;
- at least four jets, pT > 30 GeV, |eta| < 2.4, tight-lepton-veto jet ID;
- at least one b-tagged jet (btagDeepFlavB >= 0.5 on NanoAOD v12);
- region 4j1b (exactly one b-tag): HT, the scalar sum of the jets' pT;
- region 4j2b (two or more b-tags): m_bjj, the mass of the trijet with the
  highest pT among those with at least one b-tag;
- 25 bins from 50 to 550 GeV, each event weighted by xsec * lumi / nevts;
- systematics: jet energy scale +-3% (pt_scale_up/down, the selection is
  redone), b-tag weights btag_var_{0..3}_{up,down} (1 +- 7.5% * pT_i / 50 GeV
  of the i-th jet), and a flat +-2.5% scale_var on the non-ttbar processes.

Kept in a module so the notebook stays readable; the notebook registers it
with cloudpickle so the grid workers need no copy of this file.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import awkward as ak
import hist
import numpy as np
from coffea import processor

LUMI = 3378.0  # pb^-1, the AGC's 2015 CMS open data luminosity
B_TAG_THRESHOLD = 0.5
BTAG_BRANCH = "btagDeepFlavB"  # the AGC's 2015 open-data NanoAOD has btagCSVV2 instead
BTAG_FALLBACK = "btagCSVV2"
BINS = (25, 50.0, 550.0)
REGIONS = ("4j1b", "4j2b")
JES = {"nominal": 1.0, "pt_scale_up": 1.03, "pt_scale_down": 0.97}
N_BTAG_VARS = 4
BTAG_VARIATION = 0.075
FLAT_VARIATION = 0.025
SIGNAL = "ttbar"
PSEUDODATA = "pseudodata"  # histograms.root's Asimov dataset, per region


def variations() -> list[str]:
    out = list(JES)
    for i in range(N_BTAG_VARS):
        out += [f"btag_var_{i}_up", f"btag_var_{i}_down"]
    return [*out, "scale_var_up", "scale_var_down"]


def is_dask(events) -> bool:
    """True for coffea's dask mode (dask-awkward arrays), False for eager
    or virtual arrays (processor.Runner)."""
    return type(events).__module__.startswith("dask_awkward")


def new_histograms(dask: bool = False) -> dict[str, hist.Hist]:
    """Weighted histograms and unweighted entry counts, same axes; with
    dask=True lazy hist.dask histograms that dask.compute turns into hist.Hist."""
    if dask:
        import hist.dask as hist_module
    else:
        hist_module = hist
    axes = (
        hist.axis.Regular(*BINS, name="observable", label="observable [GeV]"),
        hist.axis.StrCategory(list(REGIONS), name="region", label="region"),
        hist.axis.StrCategory([], name="process", label="process", growth=True),
        hist.axis.StrCategory([], name="variation", label="variation", growth=True),
    )
    return {
        "hist": hist_module.Hist(*axes, storage=hist.storage.Weight()),
        "entries": hist_module.Hist(*axes, storage=hist.storage.Int64()),
    }


def btag_weight_variation(i_jet: int, jet_pt) -> tuple:
    """(up, down) weights from the pT of the i-th jet: 1 +- 7.5% * pT / 50 GeV."""
    r = BTAG_VARIATION * jet_pt[:, i_jet] / 50.0
    return 1.0 + r, 1.0 - r


def lepton_count(events) -> ak.Array:
    """Tight electrons + muons per event; the jet energy scale does not change
    it, so it is computed once per chunk, not once per JES variation."""
    elec, muon = events.Electron, events.Muon
    sel_el = (elec.pt > 30) & (abs(elec.eta) < 2.1) & (elec.cutBased == 4) & (elec.sip3d < 4)
    sel_mu = (
        (muon.pt > 30)
        & (abs(muon.eta) < 2.1)
        & muon.tightId
        & (muon.sip3d < 4)
        & (muon.pfRelIso04_all < 0.15)
    )
    return ak.sum(sel_el, axis=1) + ak.sum(sel_mu, axis=1)


def select(events, n_lep, jes: float = 1.0):
    """Selected jets per region and the observable, for one jet-energy scale.

    n_lep: lepton_count(events). Returns {region: (jets_in_region, observable)}
    as one-dimensional awkward arrays (dask-awkward in dask mode: the awkward
    functions below dispatch to dask-awkward).
    """
    jet = events.Jet
    btag = BTAG_BRANCH if BTAG_BRANCH in jet.fields else BTAG_FALLBACK
    jet_pt = jet.pt * jes
    # the five columns we need as one four-vector record, cut with one mask
    # (one jagged-mask slice instead of one per column)
    jets = ak.zip(
        {"pt": jet_pt, "eta": jet.eta, "phi": jet.phi, "mass": jet.mass, "btag": jet[btag]},
        with_name="PtEtaPhiMLorentzVector",
        behavior=jet.behavior,
    )
    jets = jets[(jet_pt > 30) & (abs(jet.eta) < 2.4) & jet.isTightLeptonVeto]
    n_b = ak.sum(jets.btag >= B_TAG_THRESHOLD, axis=1)
    base = (n_lep == 1) & (ak.num(jets, axis=1) >= 4) & (n_b >= 1)

    out = {}
    jets_1b = jets[base & (n_b == 1)]
    out["4j1b"] = (jets_1b, ak.sum(jets_1b.pt, axis=1))

    # to_packed: a compact copy of the few 4j2b events' jets, so that the
    # trijet combinatorics below do not go through views of all the jets
    jets_2b = ak.to_packed(jets[base & (n_b >= 2)])
    # four-vector sums are plain additions in Cartesian coordinates: convert
    # each jet once (to_xyzt) rather than each jet of each of its trijets
    trijet = ak.combinations(jets_2b.to_xyzt(), 3, fields=["j1", "j2", "j3"])
    p4 = trijet.j1 + trijet.j2 + trijet.j3
    max_btag = np.maximum(trijet.j1.btag, np.maximum(trijet.j2.btag, trijet.j3.btag))
    p4 = p4[max_btag >= B_TAG_THRESHOLD]
    best = ak.argmax(p4.pt, axis=1, keepdims=True)
    out["4j2b"] = (jets_2b, ak.flatten(p4[best].mass))
    return out


def event_count(events):
    """len(events); in dask mode a lazy one-bin histogram of the events
    (dask-awkward 2025.3 with awkward 2.14 cannot build ak.num(..., axis=0):
    'scalar conversion/promotion is disabled'), which run_dask turns into an int."""
    if not is_dask(events):
        return len(events)
    import hist.dask

    counter = hist.dask.Hist(hist.axis.Integer(0, 1, name="n", flow=False))
    counter.fill(n=ak.zeros_like(events.run))
    return counter


class TtbarAnalysis(processor.ProcessorABC):
    """One histogram set per chunk (processor.Runner adds them up), or per
    dataset in dask mode (lazy; dask.compute, then accumulate)."""

    def process(self, events):
        dask = is_dask(events)
        out = new_histograms(dask)
        h, entries = out["hist"], out["entries"]
        meta = events.metadata
        process_name = meta.get("process", meta["dataset"])
        n_events = event_count(events)
        if not meta.get("nevts") and dask:
            raise ValueError(
                f"dask mode: the fileset's metadata of {process_name!r} needs 'nevts' "
                "(the weight xsec * lumi / nevts is fixed before anything is read)"
            )
        nevts = meta.get("nevts") or n_events
        weight = float(meta.get("xsec", 1.0)) * LUMI / float(nevts)

        def fill(region, process_name, variation, observable, w):
            # the weight as an array like the observable (scalar or per event)
            w = ak.ones_like(observable, dtype=np.float64) * w
            kw = dict(region=region, process=process_name, variation=variation)
            h.fill(observable=observable, weight=w, **kw)
            entries.fill(observable=observable, **kw)

        n_lep = lepton_count(events)
        for jes_name, jes in JES.items():
            for region, (jets, observable) in select(events, n_lep, jes).items():
                fill(region, process_name, jes_name, observable, weight)
                if jes_name != "nominal":
                    continue
                for i in range(N_BTAG_VARS):
                    up, down = btag_weight_variation(i, jets.pt)
                    fill(region, process_name, f"btag_var_{i}_up", observable, weight * up)
                    fill(region, process_name, f"btag_var_{i}_down", observable, weight * down)
                if process_name != SIGNAL:
                    for d, s in (("up", 1.0), ("down", -1.0)):
                        flat = weight * (1.0 + s * FLAT_VARIATION)
                        fill(region, process_name, f"scale_var_{d}", observable, flat)
        return {"hist": h, "entries": entries, "nevents": {process_name: n_events}}

    def postprocess(self, accumulator):
        return accumulator


def dask_events(fileset: dict, uproot_options: dict | None = None, steps_per_file: int = 1) -> dict:
    """coffea's dask mode: one lazy NanoEvents array per process of the fileset
    (NanoEventsFactory.from_root(..., mode="dask").events()), with the
    fileset's metadata as events.metadata; steps_per_file partitions per file."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    events = {}
    for process_name, spec in fileset.items():
        events[process_name] = NanoEventsFactory.from_root(
            dict(spec["files"]),
            mode="dask",
            schemaclass=NanoAODSchema,
            metadata={"dataset": process_name, **spec.get("metadata", {})},
            uproot_options=dict(uproot_options or {}),
            steps_per_file=steps_per_file,
        ).events()
    return events


def run_dask(fileset: dict, uproot_options: dict | None = None, steps_per_file: int = 1) -> dict:
    """The analysis in dask mode: build the task graph of every process, one
    dask.compute on the current scheduler (the cluster's client when one is
    open), then add the per-process outputs up as processor.Runner does."""
    import dask

    analysis = TtbarAnalysis()
    events = dask_events(fileset, uproot_options, steps_per_file)
    lazy = [analysis.process(ev) for ev in events.values()]
    (computed,) = dask.compute(lazy)
    for out in computed:
        out["nevents"] = {p: int(n.sum()) for p, n in out["nevents"].items()}
    return processor.accumulate(computed)


@contextmanager
def cluster_progress(client, desc: str = "tasks on the cluster", interval: float = 0.5):
    """A tqdm bar of this client's tasks (done / submitted) while the block runs.

    coffea's own rich bar opens a second scheduler connection without the
    cluster's TLS credentials, which a gateway cluster refuses; this one only
    reads the client's own future states."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="task")
    stop = threading.Event()

    def update():
        try:
            states = list(client.futures.values())
        except RuntimeError:  # changed while copying: next time
            return
        bar.total = len(states)
        bar.n = sum(s.status in ("finished", "lost") for s in states)
        bar.refresh()

    def poll():
        while not stop.wait(interval):
            update()

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield bar
    finally:
        stop.set()
        t.join()
        bar.n = bar.total or 0
        bar.refresh()
        bar.close()


def to_json(output: dict) -> dict:
    """Histogram contents, flow bins included, keyed region/process/variation."""
    h, entries = output["hist"], output["entries"]
    data = {
        "bins": list(h.axes["observable"].edges),
        "lumi": LUMI,
        "nevents": dict(output["nevents"]),
        "histograms": {},
    }
    for region in h.axes["region"]:
        for process_name in h.axes["process"]:
            for variation in h.axes["variation"]:
                key = dict(region=region, process=process_name, variation=variation)
                sub = h[key]
                data["histograms"][f"{region}/{process_name}/{variation}"] = {
                    "sumw": sub.values(flow=True).tolist(),
                    "sumw2": sub.variances(flow=True).tolist(),
                    "entries": entries[key].values(flow=True).astype(int).tolist(),
                }
    return data


def root_name(region: str, process_name: str, variation: str) -> str:
    """The AGC reference's histogram names: 4j1b_ttbar, 4j1b_ttbar_pt_scale_up."""
    name = f"{region}_{process_name}"
    return name if variation == "nominal" else f"{name}_{variation}"


def save_root(output: dict, path: str | Path) -> Path:
    """One TH1D per region, process and variation (sumw and sumw2, flow bins
    included), written with uproot under the AGC reference's names, and per
    region ``<region>_pseudodata``: the sum of the nominal predictions, the
    Asimov dataset the fit uses (the shipped samples carry no collision data)."""
    import uproot

    h = output["hist"]
    path = Path(path)
    with uproot.recreate(path) as f:
        for region in h.axes["region"]:
            for process_name in h.axes["process"]:
                for variation in h.axes["variation"]:
                    key = dict(region=region, process=process_name, variation=variation)
                    f[root_name(region, process_name, variation)] = h[key]
            nominal = h[dict(region=region, variation="nominal")]
            f[f"{region}_{PSEUDODATA}"] = nominal.project("observable")
    return path


def save(output: dict, directory: str | Path) -> Path:
    """Write histograms.json (contents), histograms.pkl (the hist objects) and
    histograms.root (ROOT histograms, see save_root)."""
    import pickle

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "histograms.json").write_text(json.dumps(to_json(output), indent=1))
    with open(directory / "histograms.pkl", "wb") as f:
        pickle.dump({k: output[k] for k in ("hist", "entries")}, f)
    save_root(output, directory / "histograms.root")
    return directory / "histograms.json"


def cabinetry_config(path: str | Path, output: dict, output_dir: str | Path) -> dict:
    """The cabinetry configuration in ``path`` (cabinetry_config.yml), reading
    the histograms.root that ``save`` wrote to ``output_dir``, with a sample for
    each background process of the fileset (its flat ``scale_var`` variation a
    systematic of theirs). Validated by cabinetry."""
    import cabinetry

    config = cabinetry.configuration.load(path)
    output_dir = Path(output_dir)
    general = config["General"]
    names = general["InputPath"].rpartition(":")[2]  # {RegionPath}_{SamplePath}...
    general["InputPath"] = f"{output_dir / 'histograms.root'}:{names}"
    general["HistogramFolder"] = str(output_dir / "templates")
    backgrounds = [p for p in output["hist"].axes["process"] if p != SIGNAL]
    config["Samples"] += [{"Name": p, "SamplePath": p} for p in backgrounds]
    if backgrounds:
        config["Systematics"].append(
            {
                "Name": "Background normalisation",
                "Type": "NormPlusShape",
                "Up": {"VariationPath": "_scale_var_up"},
                "Down": {"VariationPath": "_scale_var_down"},
                "Samples": backgrounds,
            }
        )
    cabinetry.configuration.validate(config)
    return config


def drop_empty_bins(workspace: dict) -> dict:
    """The pyhf workspace without the bins where no sample expects events:
    their statistical uncertainty is 0/0, which derails the fit (the shipped
    samples leave most bins empty). Regions left with no bins are dropped."""
    channels, observations = [], []
    observed = {o["name"]: o["data"] for o in workspace["observations"]}
    for channel in workspace["channels"]:
        total = np.sum([s["data"] for s in channel["samples"]], axis=0)
        keep = total > 0
        if not keep.any():
            continue

        def cut(values, keep=keep):
            return np.asarray(values)[keep].tolist()

        samples = []
        for sample in channel["samples"]:
            modifiers = []
            for m in sample["modifiers"]:
                data = m["data"]
                if m["type"] in ("staterror", "shapesys"):
                    data = cut(data)
                elif m["type"] == "histosys":
                    data = {"hi_data": cut(data["hi_data"]), "lo_data": cut(data["lo_data"])}
                modifiers.append({**m, "data": data})
            samples.append({**sample, "data": cut(sample["data"]), "modifiers": modifiers})
        channels.append({**channel, "samples": samples})
        observations.append({"name": channel["name"], "data": cut(observed[channel["name"]])})
    return {**workspace, "channels": channels, "observations": observations}
