"""Security checks on the running facility (deployed Traefik config, hub,
gateway, DiracX, local site): who may reach a scheduler, where secrets may
appear, which headers hub pages carry.

Hub secrets' modes (test_hub_masterclass), the IAM token file and its value
(test_hub_iam), the embedded DiracX's keys (test_dirac_embedded) and the
reverse path's refusals (test_tunnel_refusals) are tested there.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import httpx
import pytest
from distributed import Client
from gateway_fixtures import jobs_of, refused
from processes import CONNECTION_ERRORS, free_port, wait_for
from stack import Acme, stack_fixture  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(300)

# a JSON Web Token: DiracX access and refresh tokens, hub OAuth tokens
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
PRIVATE_KEY = b"PRIVATE KEY-----"


def test_hub_pages_may_be_framed_only_by_the_hub(stack):
    # JupyterHub: 'self' on its pages, 'none' on the login page
    for path in ("/hub/login", "/hub/api/"):
        r = httpx.get(stack.hub_url + path, timeout=10)
        csp = r.headers.get("Content-Security-Policy", "")
        assert re.search(r"frame-ancestors '(self|none)'(;|$)", csp), (path, dict(r.headers))


def test_with_the_self_signed_certificate_no_page_carries_hsts(stack):
    # HSTS for a certificate browsers cannot verify would lock them out
    r = httpx.get(stack.hub_url + "/hub/login", timeout=10)
    assert r.status_code == 200
    assert "Strict-Transport-Security" not in r.headers, dict(r.headers)


def test_with_acme_every_https_response_carries_hsts(stack, tmp_path):
    # The deployed template in its ACME mode (ACME_EMAIL set), on the same
    # routes. Its ACME directory does not answer (nothing leaves this
    # machine), so Traefik serves the default certificate meanwhile, as it
    # does until Let's Encrypt has issued one.
    acme = Acme(
        public_host="gridhub.example.org",
        email="ops@example.org",
        ca_server=f"https://127.0.0.1:{free_port()}/directory",
        storage=tmp_path / "acme.json",
    )
    traefik = stack.start_traefik(tmp_path / "traefik-acme", acme=acme)
    try:
        base = f"https://localhost:{traefik.https_port}"
        # the hub's routes (file provider) and the gateway's (HTTP provider)
        for path in ("/hub/login", "/services/dask-gateway/api/health"):
            r = wait_for(
                lambda path=path: (
                    (r := httpx.get(base + path, timeout=10)).status_code == 200 and r
                ),
                60,
                f"{path} through the ACME-mode Traefik",
                stack.logs,
                interval=0.5,
                retry=CONNECTION_ERRORS,
            )
            assert r.headers.get("Strict-Transport-Security") == "max-age=31536000", (
                path,
                dict(r.headers),
            )
        # and the resolver is really in use: Traefik asked the directory for the name
        wait_for(
            lambda: (
                "acme" in (log := traefik.logfile.read_text()).lower()
                and "gridhub.example.org" in log
            ),
            60,
            "Traefik's ACME attempt in its log",
            stack.logs,
            interval=0.5,
            retry=CONNECTION_ERRORS,
        )
    finally:
        traefik.stop()


def test_a_client_with_another_clusters_certificate_is_refused(stack):
    with stack.client("ivan") as ivan, stack.client("judy") as judy:
        a, b = ivan.new_cluster(), judy.new_cluster()
        try:
            # the real client of a gets in
            with Client(a.scheduler_address, security=a.security, timeout=30) as c:
                assert c.scheduler_info()["type"] == "Scheduler"
            # b's certificate is a valid cluster certificate, but not a's
            with pytest.raises((OSError, TimeoutError)):
                Client(a.scheduler_address, security=b.security, timeout=10)
            # nor does judy see or reach ivan's cluster through the API
            assert a.name not in [c.name for c in judy.list_clusters()]
            with refused(r"lacks permissions|not found|403|404"):
                judy.connect(a.name)
        finally:
            a.shutdown()
            b.shutdown()


def _secrets(stack, job_dirs: list[Path]) -> dict[str, bytes]:
    """Every secret value this run holds, by where it comes from."""
    found = {"traefik provider token": stack.provider_token.encode()}
    state = stack.diracx.state_dir
    raw = (state / "legacy-api-key").read_bytes().strip()
    found["DiracX legacy API key"] = raw
    found["DiracX legacy API key (unpadded)"] = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(raw)
    ).rstrip(b"=")
    found["DiracX state key"] = (state / "state-key").read_bytes().strip()
    from gridhub.embedded import store_credentials

    found["sandbox store secret"] = store_credentials(state)[1].encode()
    hub_secrets = stack.jupyterhub.state / "secrets"
    for f in hub_secrets.iterdir():
        found[f"hub secret {f.name}"] = f.read_bytes().strip()
    return {k: v for k, v in found.items() if len(v) >= 16}


def _cluster_token(name: str) -> bytes:
    """The cluster's API token, from its scheduler process's environment
    (the harness's process schedulers have it there)."""
    for _proc, _uid, _argv, environ in _processes():
        env = dict(v.partition(b"=")[::2] for v in environ.split(b"\0") if b"=" in v)
        if env.get(b"DASK_GATEWAY_CLUSTER_NAME") == name.encode():
            token = env.get(b"DASK_GATEWAY_API_TOKEN", b"")
            if token and not token.startswith(b"/"):
                return token
    raise AssertionError(f"no scheduler process of cluster {name} with its token")


def _logs(stack, job_dirs: list[Path]) -> list[Path]:
    files = [p for p in stack.work.rglob("*.log") if p.is_file()]
    files += [stack.jupyterhub.log_path, stack.diracx._proc.logfile, stack.site._proc.logfile]
    for d in job_dirs:
        files += [d / "std.out", d / "std.err"]
    return [f for f in files if f.exists()]


def _processes():
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                yield p, p.stat().st_uid, (p / "cmdline").read_bytes(), (p / "environ").read_bytes()
            except OSError:
                continue


def _ours() -> set[str]:
    """PIDs of this test run's processes: its descendants (hub, gateway,
    schedulers, Traefik, DiracX, the site and its jobs)."""
    children: dict[str, list[str]] = {}
    for p in Path("/proc").iterdir():
        try:
            ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(p.name)
    ours, todo = set(), [str(os.getpid())]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo += children.get(pid, [])
    return ours


def test_no_secret_in_logs_argv_or_other_users_environment(stack):
    with stack.client("mallory") as gateway:
        cluster = gateway.new_cluster()
        try:
            cluster.scale(1)
            with cluster.get_client() as client:
                client.wait_for_workers(1, timeout=120)
                assert client.submit(lambda: 1 + 1).result(timeout=60) == 2
            job_dirs = [
                stack.site.jobs_dir / str(j["JobID"]) for j in jobs_of(stack.diracx, cluster.name)
            ]
            secrets = _secrets(stack, job_dirs)
            secrets["cluster API token"] = _cluster_token(cluster.name)

            # a grid job carries only what a worker needs: not the token that
            # posts heartbeats and stops the cluster (issue 15, point 4)
            for d in job_dirs:
                for f in d.rglob("*"):
                    if f.is_file() and f.name not in ("std.out", "std.err"):
                        data = f.read_bytes()
                        assert b"DASK_GATEWAY_API_TOKEN" not in data, f"the API token in {f}"
                        assert secrets["cluster API token"] not in data, f"the API token in {f}"

            # the sandbox at the site: owner-only (a shared node has other users)
            for d in job_dirs:
                for name in ("worker.env", "dask.pem"):
                    mode = stat.S_IMODE((d / name).stat().st_mode)
                    assert mode == 0o600, f"{d / name} is {oct(mode)}"

            me, ours = os.getuid(), _ours()
            for proc, uid, argv, environ in _processes():
                for what, value in secrets.items():
                    # argv is world-readable (/proc/<pid>/cmdline)
                    assert value not in argv, f"{what} in the argv of {proc}: {argv[:200]!r}"
                    if uid != me:
                        assert value not in environ, f"{what} in the environment of {proc}"
                if proc.name in ours:  # (other people's processes share this machine)
                    assert not JWT.search(argv), f"a token in the argv of {proc}: {argv[:200]!r}"
        finally:
            cluster.shutdown()

    for log in _logs(stack, job_dirs):
        text = log.read_bytes()
        for what, value in secrets.items():
            assert value not in text, f"{what} in {log}"
        assert not JWT.search(text), f"a token in {log}: {JWT.search(text).group()[:20]!r}..."
        assert PRIVATE_KEY not in text, f"a private key in {log}"


def test_facility_secret_files_are_private(stack):
    """Files the gateway and the embedded DiracX write for themselves."""
    private = [
        stack.diracx.state_dir / "sandboxes.moto",  # sandboxes hold cluster keys
        stack.diracx.state_dir / "s3-credentials",  # the sandbox store's credential
        *(stack.work / "gateway-state" / "tunnel").glob("ssh_host_*_key"),
        *(stack.work / "clusters").glob("*/.certs/dask.pem"),
        stack.dynamic_dir / "rules.toml",  # the Traefik API's password hash
    ]
    assert len(private) >= 3, private
    for f in private:
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, f"{f} is {oct(stat.S_IMODE(st.st_mode))}"
        assert st.st_uid == os.getuid(), f"{f} is owned by uid {st.st_uid}"
