"""Which stand-in site takes a job: the JDL's requirements against the catalogue."""

import argparse

import pytest
from gridhub.dirac.jdl import parse_jdl
from gridhub.gateway.jdl import WorkerJob
from gridhub.localsite import Requirements, SiteCatalogue, _catalogue, megabytes

SITES = {"LCG.Local.gridhub": [], "LCG.GPU.gridhub": ["GPU"]}


def req(**kw) -> Requirements:
    job = WorkerJob(cluster_name="c", worker_name="w", username="u", sandbox_pfn="SB:x", **kw)
    return Requirements.of(parse_jdl(job.jdl()))


def takers(catalogue: SiteCatalogue, job_id: int, r: Requirements) -> list[str]:
    return [s for s in SITES if catalogue.takes(s, job_id, r)]


def test_requirements_read_from_the_jdl_the_gateway_writes():
    r = req(sites=["LCG.GPU.gridhub"], banned_sites=["LCG.Bad.fr"], tags=["GPU"], memory_mb=2048)
    assert r == Requirements(
        frozenset({"LCG.GPU.gridhub"}), frozenset({"LCG.Bad.fr"}), frozenset({"GPU"}), 2048
    )
    assert req() == Requirements()


def test_exactly_one_site_takes_each_job_and_plain_jobs_spread():
    cat = SiteCatalogue(SITES)
    owners = [takers(cat, job_id, req()) for job_id in range(1, 11)]
    assert all(len(o) == 1 for o in owners), owners
    assert {o[0] for o in owners} == set(SITES)  # both sites get plain jobs


def test_a_tag_sends_every_job_to_the_site_offering_it():
    cat = SiteCatalogue(SITES)
    for job_id in range(1, 11):
        assert takers(cat, job_id, req(tags=["GPU"])) == ["LCG.GPU.gridhub"]
    assert cat.eligible(req(tags=["TPU"])) == []
    assert all(takers(cat, job_id, req(tags=["TPU"])) == [] for job_id in range(1, 5))


def test_site_choice_and_banned_sites():
    cat = SiteCatalogue(SITES)
    for job_id in range(1, 6):
        assert takers(cat, job_id, req(sites=["LCG.Local.gridhub"])) == ["LCG.Local.gridhub"]
        assert takers(cat, job_id, req(banned_sites=["LCG.GPU.gridhub"])) == ["LCG.Local.gridhub"]
    assert takers(cat, 1, req(sites=["LCG.GPU.gridhub"], banned_sites=["LCG.GPU.gridhub"])) == []


def test_a_lone_site_without_catalogue_offers_no_tag():
    cat = SiteCatalogue()
    assert cat.takes("LCG.Local.gridhub", 7, req())
    assert cat.takes("LCG.Local.gridhub", 7, req(sites=["LCG.Local.gridhub"]))
    assert not cat.takes("LCG.Local.gridhub", 7, req(sites=["LCG.Other.ch"]))
    assert not cat.takes("LCG.Local.gridhub", 7, req(banned_sites=["LCG.Local.gridhub"]))
    assert not cat.takes("LCG.Local.gridhub", 7, req(tags=["GPU"]))


def test_sizes_and_a_bad_catalogue():
    assert megabytes("3G") == 3072
    assert megabytes("512m") == 512
    assert megabytes(str(2 * 2**30)) == 2048
    assert _catalogue('{"A": ["GPU"]}').sites == {"A": frozenset({"GPU"})}
    for bad in ('["A"]', '{"A": "GPU"}', "{not json"):
        with pytest.raises(argparse.ArgumentTypeError, match="--site-catalogue"):
            _catalogue(bad)
