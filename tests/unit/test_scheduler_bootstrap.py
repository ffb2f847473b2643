"""The warm scheduler's bootstrap (gridhub.gateway.scheduler_bootstrap): the job
line it accepts, the environment and dask configuration the scheduler then
runs with, and that a refused job is never echoed."""

from __future__ import annotations

import io
import json
import os
import sys

import dask.config
import pytest
from gridhub.gateway import scheduler_bootstrap as boot

KEY = "-----BEGIN PRIVATE KEY-----\nMIIkey\n-----END PRIVATE KEY-----\n"


def line(job: object) -> io.BytesIO:
    return io.BytesIO(json.dumps(job).encode() + b"\n")


def test_reads_one_job_line() -> None:
    job = {"argv": ["python", "-m", "mod.x", "--host", "h"], "env": {"A": "1"}}
    assert boot.read_job(line(job)) == ("mod.x", ["--host", "h"], {"A": "1"})


@pytest.mark.parametrize(
    "data",
    [
        b"",  # stdin closed before a job came (an attach that went away)
        b'{"argv": ["python", "-m", "m"], "env": {}}',  # no end of line: cut short
        b"not json\n",
        b'["python"]\n',
        b'{"argv": ["python", "-m", "m"], "env": {}, "more": 1}\n',
        b'{"argv": ["python", "m"], "env": {}}\n',
        b'{"argv": ["python", "-m", "m", 1], "env": {}}\n',
        b'{"argv": ["python", "-m", "m"], "env": {"A": 1}}\n',
        b'{"argv": ["python", "-m", "m"], "env": {"A=B": "1"}}\n',
        b'{"argv": ["python", "-m", "m"], "env": {"A": "' + b"x" * boot.MAX_JOB_BYTES + b'"}}\n',
    ],
)
def test_refuses_what_is_not_a_job(data: bytes) -> None:
    with pytest.raises(boot.JobError):
        boot.read_job(io.BytesIO(data))


def test_a_refused_job_is_not_echoed(monkeypatch, capsys) -> None:
    monkeypatch.setattr(boot, "warm", lambda: [])
    bad = {"argv": ["python", "-m", "m"], "env": {"KEY": KEY}, "extra": KEY}
    assert boot.main(line(bad)) == 2
    out = capsys.readouterr()
    assert "refused" in out.err and "MIIkey" not in out.out + out.err


def test_runs_the_module_with_the_jobs_environment_and_config(
    tmp_path, monkeypatch, capsys
) -> None:
    # a stand-in for the scheduler's command line: what it sees when it runs
    (tmp_path / "fake_scheduler.py").write_text(
        "import json, os, sys, dask.config\n"
        "import fake_seen\n"
        "fake_seen.seen = {\n"
        "  'argv': sys.argv[1:], 'name': __name__,\n"
        "  'env': os.environ.get('DASK_GATEWAY_API_TOKEN'),\n"
        "  'key': dask.config.get('distributed.comm.tls.scheduler.key'),\n"
        "  'allowed_failures': dask.config.get('distributed.scheduler.allowed-failures'),\n"
        "}\n"
    )
    (tmp_path / "fake_seen.py").write_text("seen = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the job's env stays in the test
    monkeypatch.setattr(boot, "close_stdin", lambda: None)
    # distributed (its config defaults) for real, and one that is not there
    monkeypatch.setattr(boot, "WARM_MODULES", ("distributed", "gridhub.no_such_module"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    # what the container's dask read at import: no key (the job had not come)
    assert dask.config.get("distributed.comm.tls.scheduler.key", None) is None
    job = {
        "argv": ["python", "-m", "fake_scheduler", "--host", "scheduler-pool-1"],
        "env": {
            "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": KEY,
            "DASK_GATEWAY_API_TOKEN": "tok-9f8e",
        },
    }
    try:
        assert boot.main(line(job)) == 0
        import fake_seen

        assert fake_seen.seen == {
            "argv": ["--host", "scheduler-pool-1"],
            "name": "__main__",
            "env": "tok-9f8e",
            "key": KEY,
            # distributed's own defaults survive the refresh
            "allowed_failures": 3,
        }
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    err = capsys.readouterr().err
    assert "running fake_scheduler" in err and "not importable: gridhub.no_such_module" in err
    assert "MIIkey" not in err and "tok-9f8e" not in err
    assert dask.config.get("distributed.comm.tls.scheduler.key", None) is None
