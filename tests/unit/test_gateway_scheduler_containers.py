"""Schedulers in containers of their own (issue 15, point 1): what the gateway
asks Docker for. The compose e2e test proves the running facility."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from gridhub.gateway.backend import DiracClusterConfig
from gridhub.gateway.containers import DockerDiracBackend

TOKEN = "cluster-api-token-0123456789abcdef"  # noqa: S105  (test values)
CERT = "-----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIkey\n-----END PRIVATE KEY-----\n"


class FakeContainers:
    def __init__(self) -> None:
        self.runs: list[tuple[tuple, dict]] = []

    def get(self, name):
        import docker.errors

        raise docker.errors.NotFound(name)

    def run(self, *args, **kwargs):
        self.runs.append((args, kwargs))


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.setenv("SECRET_OF_THE_GATEWAY", "must-not-leak")
    b = DockerDiracBackend(api_url="http://gateway:8000/api")
    b.containers.image = "gridhub/notebook:1"
    b.containers.network = "proj_schedulers"
    b.containers.name_prefix = "proj-scheduler-"
    b.containers.labels = {"com.docker.compose.project": "proj"}
    fake = FakeContainers()
    api = SimpleNamespace(create_endpoint_config=lambda aliases: {"Aliases": aliases})
    b.containers._client = SimpleNamespace(containers=fake, api=api)
    return b, fake


def cluster():
    return SimpleNamespace(
        name="c0ffee",
        username="alice",
        token=TOKEN,
        tls_cert=CERT.encode(),
        tls_key=KEY.encode(),
        config=DiracClusterConfig(),
        state={},
    )


def test_scheduler_gets_only_its_own_cluster_credentials(backend) -> None:
    b, _ = backend
    env = b.get_scheduler_env(cluster())
    # the key as PEM text in its environment: no path, no file, no volume
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == KEY
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == CERT
    assert env["DASK_GATEWAY_API_TOKEN"] == TOKEN
    # nothing of the gateway's own environment (LocalBackend passes PATH, USER...)
    assert "must-not-leak" not in env.values()
    assert not {"PATH", "USER", "VIRTUAL_ENV"} & set(env)


def test_scheduler_listens_on_its_container_name(backend) -> None:
    b, _ = backend
    cmd = b.get_scheduler_command(cluster())
    host = "scheduler-c0ffee"
    assert cmd[cmd.index("--host") + 1] == host
    assert cmd[cmd.index("--dashboard-address") + 1] == f"{host}:8787"
    assert cmd[cmd.index("--dg-api-address") + 1] == f"{host}:8788"
    assert cmd[cmd.index("--port") + 1] == "8786"


async def test_container_is_confined(backend) -> None:
    b, fake = backend
    states = [s async for s in b.start_scheduler(cluster())]
    assert states[-1] == {"container": "proj-scheduler-c0ffee"}
    ((args, kw),) = fake.runs
    assert args[0] == "gridhub/notebook:1"
    assert kw["name"] == "proj-scheduler-c0ffee"
    assert kw["hostname"] == "scheduler-c0ffee"
    assert kw["network"] == "proj_schedulers"
    assert kw["networking_config"] == {"proj_schedulers": {"Aliases": ["scheduler-c0ffee"]}}
    assert kw["read_only"] and kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == ["no-new-privileges"]
    assert kw["user"] not in ("0", "root", "1000:1000") and kw["pids_limit"] > 0
    assert kw["mem_limit"]
    # no volume, no bind mount: nothing of the facility's files
    assert not kw.get("volumes") and not kw.get("mounts")
    assert kw["labels"]["com.docker.compose.project"] == "proj"
    assert kw["environment"]["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == KEY


async def test_unconfigured_containers_refuse_to_start() -> None:
    b = DockerDiracBackend(api_url="http://gateway:8000/api")
    with pytest.raises(ValueError, match=r"image and \.network"):
        [s async for s in b.start_scheduler(cluster())]
