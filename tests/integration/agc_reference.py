"""An independent computation of the AGC ttbar histograms: plain uproot + numpy.

No coffea, no awkward, no hist: the branches are read per event as numpy
arrays and the selection is a Python loop over events, written from the AGC
definition (not from notebooks/agc-ttbar/agc.py), so a mistake in one is not
copied into the other.

    python agc_reference.py FILESET.json   -> prints the region totals
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import uproot

LUMI = 3378.0
BTAG = 0.5
LO, HI, NBINS = 50.0, 550.0, 25
JES = {"nominal": 1.0, "pt_scale_up": 1.03, "pt_scale_down": 0.97}

BRANCHES = [
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_jetId", "Jet_btagDeepFlavB",
]  # fmt: skip


def bin_index(x: float) -> int:
    """0 underflow, 1..NBINS the bins, NBINS+1 overflow (flow=True layout)."""
    if x < LO:
        return 0
    if x >= HI:
        return NBINS + 1
    return int((x - LO) // ((HI - LO) / NBINS)) + 1


def trijet_mass(jets: list[tuple[float, float, float, float, float]]) -> float | None:
    """m_bjj of the highest-pT trijet with at least one b-tag (pt, eta, phi, m, btag)."""
    best_pt, best_m = -1.0, None
    for a, b, c in itertools.combinations(jets, 3):
        if max(a[4], b[4], c[4]) < BTAG:
            continue
        px = py = pz = e = 0.0
        for pt, eta, phi, m, _ in (a, b, c):
            jx, jy, jz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
            px, py, pz = px + jx, py + jy, pz + jz
            e += math.sqrt(jx * jx + jy * jy + jz * jz + m * m)
        pt3 = math.hypot(px, py)
        if pt3 > best_pt:
            best_pt = pt3
            best_m = math.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0))
    return best_m


def event_selection(ev: dict, jes: float):
    """(region, observable, jet pTs of the event) or None."""
    n_el = sum(
        1
        for pt, eta, cb, sip in zip(
            ev["Electron_pt"],
            ev["Electron_eta"],
            ev["Electron_cutBased"],
            ev["Electron_sip3d"],
            strict=True,
        )
        if pt > 30 and abs(eta) < 2.1 and cb == 4 and sip < 4
    )
    n_mu = sum(
        1
        for pt, eta, tight, sip, iso in zip(
            ev["Muon_pt"],
            ev["Muon_eta"],
            ev["Muon_tightId"],
            ev["Muon_sip3d"],
            ev["Muon_pfRelIso04_all"],
            strict=True,
        )
        if pt > 30 and abs(eta) < 2.1 and tight and sip < 4 and iso < 0.15
    )
    if n_el + n_mu != 1:
        return None
    jets = []
    for pt, eta, phi, m, jet_id, btag in zip(
        ev["Jet_pt"],
        ev["Jet_eta"],
        ev["Jet_phi"],
        ev["Jet_mass"],
        ev["Jet_jetId"],
        ev["Jet_btagDeepFlavB"],
        strict=True,
    ):
        pt = float(pt) * jes
        # NanoAOD jetId bit 2 (value 4): tight lepton veto
        if pt > 30 and abs(eta) < 2.4 and (int(jet_id) & 4):
            jets.append((pt, float(eta), float(phi), float(m), float(btag)))
    if len(jets) < 4:
        return None
    n_b = sum(1 for j in jets if j[4] >= BTAG)
    if n_b == 0:
        return None
    if n_b == 1:
        return "4j1b", sum(j[0] for j in jets), [j[0] for j in jets]
    m = trijet_mass(jets)
    if m is None:
        return None
    return "4j2b", m, [j[0] for j in jets]


def compute(fileset: dict) -> dict[str, dict[str, list]]:
    """{"region/process/variation": {"sumw": [...], "entries": [...]}} (flow bins included)."""
    out: dict[str, dict[str, list]] = {}

    def fill(key, x, w):
        h = out.setdefault(key, {"sumw": [0.0] * (NBINS + 2), "entries": [0] * (NBINS + 2)})
        i = bin_index(x)
        h["sumw"][i] += w
        h["entries"][i] += 1

    for process, spec in fileset.items():
        meta = spec.get("metadata", {})
        for path, tree in spec["files"].items():
            with uproot.open(path) as f:
                arrays = f[tree].arrays(BRANCHES, library="np")
            n = len(arrays["Jet_pt"])
            weight = meta.get("xsec", 1.0) * LUMI / (meta.get("nevts") or n)
            for i in range(n):
                ev = {b: arrays[b][i] for b in BRANCHES}
                for var, jes in JES.items():
                    sel = event_selection(ev, jes)
                    if sel is None:
                        continue
                    region, x, jet_pts = sel
                    fill(f"{region}/{process}/{var}", x, weight)
                    if var != "nominal":
                        continue
                    for k in range(4):
                        r = 0.075 * jet_pts[k] / 50.0
                        fill(f"{region}/{process}/btag_var_{k}_up", x, weight * (1 + r))
                        fill(f"{region}/{process}/btag_var_{k}_down", x, weight * (1 - r))
                    if process != "ttbar":
                        fill(f"{region}/{process}/scale_var_up", x, weight * 1.025)
                        fill(f"{region}/{process}/scale_var_down", x, weight * 0.975)
    return out


def load_fileset(path: str | Path) -> dict:
    path = Path(path)
    raw = json.loads(path.read_text())
    for spec in raw.values():
        spec["files"] = {
            (p if "://" in p or Path(p).is_absolute() else str(path.parent / p)): t
            for p, t in spec["files"].items()
        }
    return raw


if __name__ == "__main__":
    result = compute(load_fileset(sys.argv[1]))
    for key in sorted(result):
        h = result[key]
        print(f"{key:40s} entries {sum(h['entries']):5d}  sumw {np.sum(h['sumw']):14.3f}")
