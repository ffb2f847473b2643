"""gridhub.accounting totals, the Prometheus text and the site's Usage."""

from __future__ import annotations

import pytest
from gridhub.accounting import JobRecord, totals
from gridhub.localsite import Usage
from gridhub.promtext import exposition


def job(job_id: int, owner: str, group: str, cluster: str, status: str, site: str) -> dict:
    return {
        "JobID": job_id,
        "Owner": owner,
        "OwnerGroup": group,
        "JobGroup": cluster,
        "Status": status,
        "Site": site,
    }


def test_totals_per_owner_group_and_cluster():
    records = [
        JobRecord.of(
            job(1, "a", "g", "c1", "Done", "S1"), {"CPUTime(ms)": 1500, "WallClockTime(s)": 3}
        ),
        JobRecord.of(
            job(2, "a", "g", "c2", "Killed", "S2"), {"TotalCPUTime(s)": 2, "WallClockTime(s)": 4}
        ),
        JobRecord.of(job(3, "b", "g", "c3", "Waiting", ""), None),
    ]
    assert records[0].cpu_s == 1.5 and records[1].cpu_s == 2.0 and records[2].cpu_s is None
    by_owner = totals(records, "owner")
    assert by_owner["a"].as_dict() == {
        "jobs": 2,
        "cpu_s": 3.5,
        "wall_s": 7.0,
        "by_status": {"Done": 1, "Killed": 1},
        "by_site": {"S1": 1, "S2": 1},
    }
    assert by_owner["b"].as_dict()["by_site"] == {"(none)": 1}
    assert totals(records, "owner_group")["g"].jobs == 3
    assert set(totals(records, "job_group")) == {"c1", "c2", "c3"}
    with pytest.raises(ValueError, match="totals by 'user'"):
        totals(records, "user")


def test_usage_becomes_dirac_job_parameters():
    u = Usage()
    u.sample(1.2, 2048, 10, 20)
    u.sample(0.9, 1024, None, None)  # counters never go back
    u.exit_status = -15
    p = u.parameters(5.0, "LCG.X.y")
    assert p["TotalCPUTime(s)"] == 1 and p["CPUTime(ms)"] == 1200
    assert p["MemoryUsed(kb)"] == 2048 and p["Memory(MB)"] == 2
    assert (p["BytesRead"], p["BytesWritten"], p["ExitStatus"]) == (10, 20, -15)
    assert p["WallClockTime(s)"] == 5.0 and p["AccountingSite"] == "LCG.X.y"
    assert "BytesRead" not in Usage().parameters(1.0, "s")


def test_prometheus_text_escapes_labels():
    text = exposition(
        [
            ("m", "gauge", "help", {(("user", 'a"b\\c\nd'),): 2}),
            ("up", "gauge", "h", {(): 1}),
        ]
    )
    assert 'm{user="a\\"b\\\\c\\nd"} 2' in text.splitlines()
    assert "up 1" in text.splitlines()
    assert text.startswith("# HELP m help\n# TYPE m gauge\n")
