"""The worker JDL parses with DIRAC's own ClassAd code and carries no secret."""

import subprocess

import pytest
from DIRACCommon.Core.Utilities.ClassAd.ClassAdLight import ClassAd
from gridhub.gateway.jdl import WorkerJob, env_file, job_sandbox, quote


def make_job(**kw):
    args = dict(
        cluster_name="abc123",
        worker_name="dask-worker-abc123-x1",
        username='eve "the" \\user',
        sandbox_pfn="SB:SandboxSE|/S3/bucket/sha256:00.tar.zst",
        cores=2,
        wall_time=600,
    )
    args.update(kw)
    return WorkerJob(**args)


def test_jdl_parses_with_dirac_classad():
    ad = ClassAd(make_job(sites=["LCG.A.ch", "LCG.B.uk"], tags=["gpu"]).jdl())
    assert ad.isOK()
    assert ad.getAttributeString("Executable") == "/bin/sh"
    assert ad.getAttributeString("JobGroup") == "abc123"
    assert ad.getAttributeString("GridHubUser") == "eve__the___user"
    assert ad.getListFromExpression("Site") == ["LCG.A.ch", "LCG.B.uk"]
    assert ad.getListFromExpression("InputSandbox") == ["SB:SandboxSE|/S3/bucket/sha256:00.tar.zst"]
    assert ad.getAttributeInt("NumberOfProcessors") == 2
    assert ad.getAttributeInt("CPUTime") == 1200


def test_requirements_parse_as_dirac_reads_them():
    jdl = make_job(banned_sites=["LCG.Bad.fr"], tags=["GPU"], memory_mb=4096).jdl()
    ad = ClassAd(jdl)
    assert ad.getListFromExpression("BannedSites") == ["LCG.Bad.fr"]
    assert ad.getListFromExpression("Tags") == ["GPU"]
    assert ad.getAttributeInt("MinRAM") == ad.getAttributeInt("MaxRAM") == 4096


def test_no_site_means_any_site():
    ad = ClassAd(make_job().jdl())
    assert not ad.lookupAttribute("Site")


def test_quote_refuses_what_classad_cannot_hold():
    assert quote("a b") == '"a b"'
    for bad in ('a"b', "a\\b", "a\nb"):
        with pytest.raises(ValueError, match="JDL string"):
            quote(bad)


def test_sandbox_holds_the_secrets_not_the_jdl():
    files = job_sandbox(
        env={"DASK_GATEWAY_API_TOKEN": "s3cret", "X": "it's"},
        worker_cmd=[
            "gridhub-worker",
            "--",
            "gateway://h:8786/abc",
            "--name",
            "{worker_name}",
        ],
        tls_cert=b"CERT",
        tls_key=b"KEY",
    )
    assert set(files) == {"gridhub-job.sh", "worker.env", "dask.crt", "dask.pem"}
    assert b"s3cret" in files["worker.env"]
    assert "s3cret" not in make_job().jdl()


def test_env_file_round_trips_through_sh(tmp_path):
    env = {"A": "plain", "B": 'it\'s "quoted" $HOME `x`', "C": ""}
    (tmp_path / "e").write_bytes(env_file(env))
    out = subprocess.run(
        ["sh", "-c", '. ./e; printf "%s|%s|%s" "$A" "$B" "$C"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == 'plain|it\'s "quoted" $HOME `x`|'


def test_job_script_substitutes_worker_name(tmp_path):
    files = job_sandbox(
        env={},
        worker_cmd=["echo", "name={worker_name}", "literal $HOME"],
        tls_cert=b"C",
        tls_key=b"K",
    )
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = subprocess.run(
        ["/bin/sh", "gridhub-job.sh", "w-7"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "name=w-7 literal $HOME"
    assert oct((tmp_path / "dask.pem").stat().st_mode & 0o777) == "0o600"
