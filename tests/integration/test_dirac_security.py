"""What a grid job's owner, or anyone who reaches the sandbox store, cannot do
to the embedded DiracX and the local site (issue 15, docs/security.md).

Real processes: the embedded DiracX (with its moto sandbox store) and local
site processes, as in test_dirac_embedded.
"""

from __future__ import annotations

import http.server
import re
import secrets
import threading

import httpx
import pytest
from processes import LocalSiteProcess, wait_for
from test_dirac_embedded import run, wait_status

pytestmark = pytest.mark.timeout(240)

BUCKET = "sandboxes"


def store_credentials(diracx) -> tuple[str, str]:
    """The S3 credential DiracX uses for its sandbox store (what an attacker
    who got hold of it could use): from the state dir where there is one."""
    try:
        from gridhub.embedded import store_credentials as creds

        return creds(diracx.state_dir)
    except ImportError:  # before the store had credentials
        return "gridhub", "gridhub"


def s3(diracx, credentials: tuple[str, str] | None = None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    kw = {"config": Config(signature_version=UNSIGNED)}
    if credentials:
        kw = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
    return boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{diracx.s3_port}", region_name="us-east-1", **kw
    )


def key_of(pfn: str) -> str:
    """DiracX's object key of a PFN (diracx.logic.jobs.sandboxes.pfn_to_key)."""
    return "/".join(pfn.split("|", 1)[-1].split("/")[3:])


async def upload(diracx, files: dict[str, bytes]) -> str:
    async with diracx.client() as dx:
        return await dx.upload_sandbox(files)


async def submit(diracx, jdl: str) -> int:
    async with diracx.client() as dx:
        (job_id,) = await dx.submit_jdl([jdl])
        return job_id


def job(pfn: str, script: str, extra: str = "") -> str:
    return (
        f'[Executable = "/bin/sh"; Arguments = "{script}"; JobName = "security";'
        f' InputSandbox = {{"{pfn}"}}; OutputSandbox = {{"std.out", "std.err"}}; {extra}]'
    )


def job_stdout(diracx, site, job_id: int) -> str:
    """The job's std.out from its output sandbox, downloaded as a user would."""

    async def download() -> str:
        async with diracx.client() as dx:
            (out,) = (await dx.job_sandboxes(job_id))["Output"]
            dest = site.work_dir / f"out-{job_id}"
            await dx.download_sandbox(out, dest)
            return (dest / "std.out").read_text()

    return run(download())


def test_a_tampered_sandbox_is_refused_with_the_reason_and_the_job_fails(
    diracx_server, diracx_local_site, tmp_path
):
    marker = tmp_path / "tampered-payload-ran"
    nonce = secrets.token_hex(8).encode()  # fresh content: a new object in the store
    pfn = run(upload(diracx_server, {"job.sh": b"echo genuine " + nonce + b"\n"}))
    # Someone with write access to the store puts other bytes under the key
    # (before issue 15, anyone reaching the store could).
    from gridhub.dirac import make_sandbox

    evil = make_sandbox({"job.sh": f"touch {marker}\necho evil\n".encode()})
    s3(diracx_server, store_credentials(diracx_server)).put_object(
        Bucket=BUCKET, Key=key_of(pfn), Body=evil
    )
    job_id = run(submit(diracx_server, job(pfn, "job.sh")))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Failed", (st, diracx_local_site.log())
    assert st.minor_status == "Input sandbox checksum mismatch", st
    assert "DiracX recorded" in (st.application_status or ""), st
    assert not marker.exists(), "the tampered sandbox's payload ran"
    wait_for(
        lambda: f"Job {job_id}: input sandbox refused" in diracx_local_site.log(),
        10,
        "the reason in the site's log",
    )
    assert "DiracX recorded" in diracx_local_site.log()
    assert not (diracx_local_site.jobs_dir / str(job_id)).exists()


@pytest.mark.parametrize("name", ["/abs/path", "../escaped.out", ".."])
def test_a_stdoutput_outside_the_job_directory_is_refused(
    diracx_server, diracx_local_site, tmp_path, name
):
    target = tmp_path / "escaped.out"
    if name == "/abs/path":
        name = str(target)
    else:  # relative to the job's directory: jobs_dir/<id>/../escaped.out
        target = diracx_local_site.jobs_dir / "escaped.out"
    pfn = run(upload(diracx_server, {"job.sh": b"echo written where it should not be\n"}))
    job_id = run(submit(diracx_server, job(pfn, "job.sh", f'StdOutput = "{name}";')))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Failed", (st, diracx_local_site.log())
    assert "StdOutput" in st.minor_status and "inside the job's directory" in st.minor_status
    assert not target.exists(), f"the job wrote {target}"


def test_a_job_directory_is_removed_once_the_job_is_final_and_its_output_uploaded(
    diracx_server, diracx_local_site
):
    pfn = run(upload(diracx_server, {"job.sh": b"echo out; echo key > dask.pem\n"}))
    job_id = run(submit(diracx_server, job(pfn, "job.sh")))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Done", (st, diracx_local_site.log())
    workdir = diracx_local_site.jobs_dir / str(job_id)
    wait_for(lambda: not workdir.exists(), 15, f"{workdir} removed", diracx_local_site.logfile)
    assert job_stdout(diracx_server, diracx_local_site, job_id) == "out\n"


@pytest.fixture
def capped_site(diracx_server, tmp_path):
    """A second local site with a 100 kB output cap, taking only its own jobs."""
    site = LocalSiteProcess(
        diracx_server, tmp_path / "capped", "--site", "LCG.Capped.gridhub", "--max-output", "100000"
    ).start()
    yield site
    site.stop()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_job_whose_output_passes_the_cap_is_stopped_and_fails_with_the_reason(
    diracx_server, capped_site, stream
):
    redirect = "" if stream == "stdout" else " 1>&2"
    script = f"head -c 10000000 /dev/zero{redirect}; sleep 300\n".encode()
    pfn = run(upload(diracx_server, {"job.sh": script}))
    job_id = run(submit(diracx_server, job(pfn, "job.sh", 'Site = "LCG.Capped.gridhub";')))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed", "Killed"}, capped_site, 90))
    assert st.status == "Failed", (st, capped_site.log())
    assert st.minor_status == "Output limit exceeded", st
    assert "100000 bytes" in (st.application_status or ""), st
    assert "output limit exceeded" in capped_site.log()
    # the job's directory held at most the cap (it is removed now)
    assert not (capped_site.jobs_dir / str(job_id)).exists()


class NotJSONProxy(http.server.ThreadingHTTPServer):
    """In front of DiracX: forwards, or (while ``html`` is set) answers every
    request with 200 and an HTML page, as a captive portal or a misrouted
    proxy would."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.html = upstream, threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.html.is_set():
                    out, status, ctype = b"<html>Please sign in</html>", 200, "text/html"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    r = httpx.request(
                        self.command, proxy.upstream + self.path, headers=headers, content=body
                    )
                    out, status = r.content, r.status_code
                    ctype = r.headers.get("content-type", "application/json")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_2xx_answer_that_is_not_json_is_logged_naming_the_server_and_the_site_keeps_running(
    diracx_server, tmp_path
):
    proxy = NotJSONProxy(diracx_server.url)
    site = LocalSiteProcess(diracx_server, tmp_path / "behind-proxy", "--site", "LCG.Proxy.gridhub")
    site._proc.argv[site._proc.argv.index("--diracx-url") + 1] = proxy.url
    try:
        proxy.html.set()
        site.start()
        wait_for(
            lambda: "not JSON" in site.log(),
            60,
            "the site's log line about the answer",
            site.logfile,
            alive=site._proc.running,
        )
        line = next(x for x in site.log().splitlines() if "not JSON" in x)
        # the server and the call (the first is the site's token exchange)
        assert proxy.url in line and re.search(r"(GET|POST) /api/\S+ answered 200", line), line
        assert site._proc.running(), site.log()
        # and once DiracX answers again, the same site runs jobs
        proxy.html.clear()
        pfn = run(upload(diracx_server, {"job.sh": b"echo still here\n"}))
        job_id = run(submit(diracx_server, job(pfn, "job.sh", 'Site = "LCG.Proxy.gridhub";')))
        st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, site))
        assert st.status == "Done", (st, site.log())
        assert "Traceback" not in site.log()
    finally:
        site.stop()
        proxy.shutdown()


# ---------------------------------------------------------------------------
# the sandbox store


def _anonymous_attempts(diracx, pfn: str) -> dict[str, httpx.Response]:
    """What anyone on the store's network tried before issue 15."""
    base = f"http://127.0.0.1:{diracx.s3_port}"
    key = key_of(pfn)
    forged = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=" + "0" * 64
    with httpx.Client(base_url=base, timeout=10) as c:
        return {
            "list buckets": c.get("/"),
            "list the bucket": c.get(f"/{BUCKET}"),
            "list the bucket (v2)": c.get(f"/{BUCKET}?list-type=2"),
            "read a sandbox": c.get(f"/{BUCKET}/{key}"),
            "read with a forged signature": c.get(f"/{BUCKET}/{key}?{forged}"),
            "overwrite a sandbox": c.put(f"/{BUCKET}/{key}", content=b"evil"),
            "overwrite by POST form": c.post(
                f"/{BUCKET}", data={"key": key}, files={"file": ("f", b"evil")}
            ),
            "delete a sandbox": c.delete(f"/{BUCKET}/{key}"),
            "reset the store": c.post("/moto-api/reset"),
            "switch auth off": c.post("/moto-api/reset-auth", content=b"inf"),
            "download the recording": c.get("/moto-api/recorder/download-recording"),
            "the dashboard's data": c.get("/moto-api/data.json"),
        }


def test_the_sandbox_store_refuses_anonymous_access_and_its_reset_api_while_jobs_run(
    diracx_server, diracx_local_site
):
    secret = secrets.token_hex(8).encode()
    pfn = run(upload(diracx_server, {"job.sh": b"echo " + secret + b"\n"}))
    tried = _anonymous_attempts(diracx_server, pfn)
    let_through = {
        what: (r.status_code, r.text[:120]) for what, r in tried.items() if r.status_code < 400
    }
    assert not let_through, let_through
    for what, r in tried.items():
        assert secret not in r.content, what

    # a presigned URL is for its own object only: another key, same signature
    async def presigned() -> str:
        async with diracx_server.client() as dx:
            r = await dx._request("GET", "/api/jobs/sandbox", params={"pfn": pfn})
            return r.json()["url"]

    url = run(presigned())
    assert httpx.get(url, timeout=10).status_code == 200
    other = run(upload(diracx_server, {"other": secrets.token_bytes(8)}))
    digest, other_digest = (p.rsplit(":", 1)[1].split(".")[0] for p in (pfn, other))
    assert digest in url
    assert httpx.get(url.replace(digest, other_digest), timeout=10).status_code == 403
    # nothing was reset or changed, and jobs still run (DiracX and the site
    # hold the credential, the gateway and the site use presigned URLs)
    job_id = run(submit(diracx_server, job(pfn, "job.sh")))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, diracx_local_site))
    assert st.status == "Done", (st, diracx_local_site.log())
    assert job_stdout(diracx_server, diracx_local_site, job_id) == secret.decode() + "\n"


def test_the_store_credential_is_private_and_survives_a_restart(diracx_server, diracx_local_site):
    from gridhub.embedded import store_credentials as creds

    before = creds(diracx_server.state_dir)
    f = next(p for p in diracx_server.state_dir.iterdir() if p.name.startswith("s3-"))
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert before[1] not in diracx_server.log()
    diracx_server.stop()
    diracx_server.start()
    assert creds(diracx_server.state_dir) == before
    # the recorded sandboxes came back (replayed past the store's checks)
    keys = [o["Key"] for o in s3(diracx_server, before).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys


JOB_IMAGE = "debian:bookworm-slim"  # the base image tests/e2e/prepare-host seeds


@pytest.fixture
def docker_site(diracx_server, tmp_path):
    """A local site running its jobs as containers (the compose facility's runner)."""
    docker = pytest.importorskip("docker")
    try:
        docker.from_env(timeout=10).images.get(JOB_IMAGE)
    except Exception as exc:  # no daemon, or no image: nothing to test here
        pytest.skip(f"docker runner needs {JOB_IMAGE}: {exc}")
    site = LocalSiteProcess(
        diracx_server,
        tmp_path / "docker-site",
        *("--site", "LCG.Docker.gridhub", "--runner", "docker", "--image", JOB_IMAGE),
        *("--container-prefix", f"gridhub-test-{secrets.token_hex(3)}", "--job-memory", "256m"),
    ).start()
    yield site
    site.stop()


def test_job_containers_run_without_capabilities_new_privileges_or_unbounded_pids(
    diracx_server, docker_site
):
    script = (
        b"grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status\n"
        b"echo pids.max $(cat /sys/fs/cgroup/pids.max 2>/dev/null"
        b" || cat /sys/fs/cgroup/pids/pids.max)\n"
    )
    pfn = run(upload(diracx_server, {"job.sh": script}))
    job_id = run(submit(diracx_server, job(pfn, "job.sh", 'Site = "LCG.Docker.gridhub";')))
    st = run(wait_status(diracx_server, job_id, {"Done", "Failed"}, docker_site, 120))
    assert st.status == "Done", (st, docker_site.log())
    seen = dict(
        line.split(None, 1) for line in job_stdout(diracx_server, docker_site, job_id).splitlines()
    )
    assert seen["CapEff:"].strip() == "0000000000000000", seen
    assert seen["CapBnd:"].strip() == "0000000000000000", seen
    assert seen["NoNewPrivs:"].strip() == "1", seen
    assert seen["pids.max"].strip() == "1024", seen
