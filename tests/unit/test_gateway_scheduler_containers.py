"""Schedulers in containers of their own (issue 15, point 1): what the gateway
asks Docker for, the warm pool's bookkeeping, and that no credential is ever
in a container's configuration (it goes on stdin). The compose e2e test
proves the running facility."""

from __future__ import annotations

import asyncio
import itertools
import json
from types import SimpleNamespace

import pytest
from gridhub.gateway.backend import DiracClusterConfig
from gridhub.gateway.containers import DockerDiracBackend
from gridhub.gateway.scheduler_bootstrap import read_job

TOKEN = "cluster-api-token-0123456789abcdef"  # noqa: S105  (test values)
CERT = "-----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIkey\n-----END PRIVATE KEY-----\n"
SECRETS = (TOKEN, "MIIkey", "MIIcert")


class FakeContainer:
    def __init__(self, docker: FakeDocker, cid: str, name: str, kwargs: dict) -> None:
        self.docker, self.id, self.name, self.kwargs = docker, cid, name, kwargs
        self.status = "running"
        # the networks it is on, each with its aliases
        self.networks: dict[str, list[str]] = {}

    def start(self) -> None:
        self.status = "running"

    def rename(self, name: str) -> None:
        if any(c.name == name for c in self.docker.alive()):
            raise AssertionError(f"name {name} taken")
        self.docker.renames.append((self.name, name))
        self.name = name

    def remove(self, force: bool = False) -> None:
        assert force
        self.docker.removed.append(self.name)
        self.docker.all.remove(self)


class FakeSocket:
    def __init__(self, docker: FakeDocker, cid: str) -> None:
        self.docker, self.cid, self.data, self.closed = docker, cid, b"", False

    def sendall(self, data: bytes) -> None:
        self.data += data

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.docker.stdin.setdefault(self.cid, []).append(self.data)


class FakeDocker:
    """What the gateway does through docker-py, recorded."""

    def __init__(self) -> None:
        self.all: list[FakeContainer] = []
        self.runs: list[tuple[tuple, dict]] = []
        self.renames: list[tuple[str, str]] = []
        self.removed: list[str] = []
        self.stdin: dict[str, list[bytes]] = {}
        self.ids = (f"id{i}" for i in itertools.count())
        self.containers = self
        # networks by name: their create arguments; the template is there
        self.nets: dict[str, dict] = {"proj_schedulers": {"Options": {}, "labels": {}}}
        self.api = SimpleNamespace(
            create_endpoint_config=lambda aliases: {"Aliases": aliases},
            attach_socket=self.attach_socket,
            networks=self.list_networks,
            inspect_network=self.inspect_network,
            create_network=self.create_network,
            connect_container_to_network=self.connect,
            disconnect_container_from_network=self.disconnect,
            remove_network=self.remove_network,
            inspect_container=self.inspect_container,
        )

    # docker-py's low-level network API
    def list_networks(self, names=None, filters=None) -> list[dict]:
        out = []
        for name, net in self.nets.items():
            if names is not None and name not in names:
                continue
            if filters:
                key, value = filters["label"].split("=", 1)
                if net["labels"].get(key) != value:
                    continue
            subnets = [{"Subnet": net["subnet"]}] if net.get("subnet") else []
            out.append({"Name": name, "Id": name, "IPAM": {"Config": subnets}})
        return out

    def inspect_network(self, name: str) -> dict:
        import docker.errors

        if name not in self.nets:
            raise docker.errors.NotFound(name)
        on = {c.id: {"Name": c.name} for c in self.all if name in c.networks}
        return {"Name": name, "Options": self.nets[name]["Options"], "Containers": on}

    def create_network(self, name, driver, internal, options, ipam, labels, check_duplicate):
        assert name not in self.nets and driver == "bridge" and internal
        (pool,) = ipam["Config"]
        self.nets[name] = {"Options": options or {}, "labels": labels, "subnet": pool["Subnet"]}

    def connect(self, cid: str, net: str, aliases: list[str]) -> None:
        ctr = self.get(cid)
        assert net in self.nets and net not in ctr.networks
        ctr.networks[net] = aliases

    def disconnect(self, cid: str, net: str, force: bool = False) -> None:
        del self.get(cid).networks[net]

    def remove_network(self, name: str) -> None:
        assert not self.inspect_network(name)["Containers"], f"{name} in use"
        del self.nets[name]

    def inspect_container(self, cid: str) -> dict:
        ctr = self.get(cid)
        return {
            "Config": {"Labels": ctr.kwargs["labels"]},
            "NetworkSettings": {"Networks": {n: {"Aliases": a} for n, a in ctr.networks.items()}},
        }

    def member(self, name: str, aliases: list[str]) -> FakeContainer:
        """A service on the schedulers' network (Traefik, the gateway)."""
        ctr = self.add(name)
        ctr.networks["proj_schedulers"] = aliases
        return ctr

    def alive(self) -> list[FakeContainer]:
        return list(self.all)

    def add(self, name: str, labels: dict | None = None) -> FakeContainer:
        ctr = FakeContainer(self, next(self.ids), name, {"labels": labels or {}})
        self.all.append(ctr)
        return ctr

    # docker-py's containers collection
    def create(self, *args, **kwargs) -> FakeContainer:
        self.runs.append((args, kwargs))
        ctr = self.add(kwargs["name"], kwargs["labels"])
        ctr.kwargs = kwargs
        ctr.status = "created"
        ctr.networks = {
            kwargs["network"]: kwargs["networking_config"][kwargs["network"]]["Aliases"]
        }
        return ctr

    def run(self, *args, **kwargs) -> FakeContainer:  # create + start (the code before the pool)
        ctr = self.create(*args, **kwargs)
        ctr.start()
        return ctr

    def get(self, name_or_id: str) -> FakeContainer:
        import docker.errors

        for c in self.all:
            if name_or_id in (c.id, c.name):
                return c
        raise docker.errors.NotFound(name_or_id)

    def list(self, all: bool = False, filters: dict | None = None) -> list[FakeContainer]:
        key, value = (filters or {})["label"].split("=", 1)
        found = [c for c in self.all if c.kwargs["labels"].get(key) == value]
        return [c for c in found if all or c.status == "running"]

    def attach_socket(self, cid: str, params: dict) -> SimpleNamespace:
        assert params == {"stdin": 1, "stream": 1}
        if self.get(cid).status != "running":
            raise AssertionError("attach to a stopped container")
        return SimpleNamespace(_sock=FakeSocket(self, cid))

    def job_of(self, cid: str) -> tuple[str, list[str], dict[str, str]]:
        """What the container's bootstrap reads from its stdin."""
        import io

        (data,) = self.stdin[cid]
        return read_job(io.BytesIO(data))


def make_backend(pool_size: int = 0) -> tuple[DockerDiracBackend, FakeDocker]:
    b = DockerDiracBackend(api_url="http://gateway:8000/api")
    b.containers.image = "gridhub/notebook:1"
    b.containers.network = "proj_schedulers"
    b.containers.name_prefix = "proj-scheduler-"
    b.containers.labels = {"com.docker.compose.project": "proj"}
    b.containers.pool_size = pool_size
    b.containers.pool_retry_delay = 0.01
    fake = FakeDocker()
    b.containers._client = fake
    return b, fake


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.setenv("SECRET_OF_THE_GATEWAY", "must-not-leak")
    return make_backend()


def cluster(name: str = "c0ffee"):
    return SimpleNamespace(
        name=name,
        username="alice",
        token=TOKEN,
        tls_cert=CERT.encode(),
        tls_key=KEY.encode(),
        config=DiracClusterConfig(),
        state={},
    )


async def start(b: DockerDiracBackend, c=None) -> list[dict]:
    return [s async for s in b.start_scheduler(c or cluster())]


async def settle(b: DockerDiracBackend, n: int) -> None:
    """Until the pool holds n warm containers (the refill runs in the background)."""
    for _ in range(500):
        if len(b.containers._pool) == n and b.containers._creating is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"pool has {len(b.containers._pool)}, not {n}")


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
    states = await start(b)
    assert states[-1] == {"container": "proj-scheduler-c0ffee"}
    ((args, kw),) = fake.runs
    assert args[0] == "gridhub/notebook:1"
    assert args[1] == ["python", "-m", "gridhub.gateway.scheduler_bootstrap"]
    assert kw["name"] == "proj-scheduler-c0ffee"
    assert kw["hostname"] == "scheduler-c0ffee"
    # on its cluster's own network, not the schedulers' (cluster_networks.py)
    assert kw["network"] == "proj_schedulers-c0ffee"
    assert kw["networking_config"] == {"proj_schedulers-c0ffee": {"Aliases": ["scheduler-c0ffee"]}}
    assert kw["read_only"] and kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == ["no-new-privileges"]
    assert kw["user"] not in ("0", "root", "1000:1000") and kw["pids_limit"] > 0
    assert kw["mem_limit"] and kw["stdin_open"]
    # no volume, no bind mount: nothing of the facility's files
    assert not kw.get("volumes") and not kw.get("mounts")
    assert kw["labels"]["com.docker.compose.project"] == "proj"


async def test_credentials_only_on_stdin_never_in_the_container_config(backend) -> None:
    """Security: `docker inspect` (name, command, environment, labels...)
    shows no key, certificate or token; the scheduler's job on its stdin has them."""
    b, fake = backend
    await start(b)
    ((args, kw),) = fake.runs
    shown = json.dumps([args, kw], default=str)
    for secret in SECRETS:
        assert secret not in shown, secret
    (ctr,) = fake.all
    assert ctr.status == "running"
    assert ctr.networks == {"proj_schedulers-c0ffee": ["scheduler-c0ffee"]}
    module, argv, env = fake.job_of(ctr.id)
    assert module == "distributed.cli.dask_scheduler"
    assert argv[argv.index("--host") + 1] == "scheduler-c0ffee"
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == KEY
    assert env["DASK_GATEWAY_API_TOKEN"] == TOKEN


async def test_unconfigured_containers_refuse_to_start() -> None:
    b = DockerDiracBackend(api_url="http://gateway:8000/api")
    with pytest.raises(ValueError, match=r"image and \.network"):
        await start(b)


async def test_pool_fills_after_removing_an_earlier_gateways_pool() -> None:
    b, fake = make_backend(pool_size=2)
    label = {"org.gridhub.scheduler-of": "proj-scheduler-"}
    fake.add("proj-scheduler-pool-0ld", label)  # an earlier gateway's warm one
    fake.add("proj-scheduler-feed", label)  # a running cluster's: kept
    fake.add("other-scheduler-pool-1", {"org.gridhub.scheduler-of": "other-scheduler-"})
    await b.containers.start_pool()
    await settle(b, 2)
    assert fake.removed == ["proj-scheduler-pool-0ld"]
    names = sorted(c.name for c in fake.all)
    assert names[:2] == ["other-scheduler-pool-1", "proj-scheduler-feed"]
    warm = [c for c in fake.all if c.name.startswith("proj-scheduler-pool-")]
    assert len(warm) == 2 and not fake.stdin  # started, but no job (no credential) yet
    for ctr in warm:
        kw = ctr.kwargs
        # running on no network: nothing reaches it, it reaches nothing
        assert ctr.status == "running" and ctr.networks == {}
        assert kw["hostname"] is None and kw["network"] == "proj_schedulers"
        assert kw["read_only"] and kw["cap_drop"] == ["ALL"] and kw["user"] == "65534:65534"
        assert kw["labels"]["org.gridhub.scheduler-of"] == "proj-scheduler-"
    await b.containers.stop_pool()


async def test_a_cluster_takes_the_oldest_warm_container_and_the_pool_refills() -> None:
    b, fake = make_backend(pool_size=2)
    await b.containers.start_pool()
    await settle(b, 2)
    oldest = b.containers._pool[0]
    states = await start(b)
    # the cluster's name (the state, stop, checks) and, only now, the network
    # with the cluster's alias: the address is the one it always was
    assert states[-1] == {"container": "proj-scheduler-c0ffee"}
    assert fake.renames == [(oldest.name, "proj-scheduler-c0ffee")]
    assert fake.get(oldest.id).networks == {"proj_schedulers-c0ffee": ["scheduler-c0ffee"]}
    _, argv, env = fake.job_of(oldest.id)
    assert argv[argv.index("--host") + 1] == "scheduler-c0ffee"
    assert argv[argv.index("--dashboard-address") + 1] == "scheduler-c0ffee:8787"
    assert env["DASK_GATEWAY_CLUSTER_NAME"] == "c0ffee"
    await settle(b, 2)
    assert len(fake.runs) == 3 and oldest not in b.containers._pool
    # the cluster's container is found and stopped by its name, as before
    assert await b.containers.running(["proj-scheduler-c0ffee", "proj-scheduler-gone"]) == [
        True,
        False,
    ]
    await b.stop_scheduler(SimpleNamespace(name="c0ffee", state=states[-1]))
    assert "proj-scheduler-c0ffee" in fake.removed
    assert "proj_schedulers-c0ffee" not in fake.nets
    await b.containers.stop_pool()


async def test_one_container_per_cluster_then_a_cold_start() -> None:
    b, fake = make_backend(pool_size=1)
    b.containers.pool_retry_delay = 3600
    # a pool that cannot refill (say the image went missing)
    name = b.containers.pool_name()
    ctr = fake.add(name, {})
    from gridhub.gateway.containers import Warm

    b.containers._pool.append(Warm(id=ctr.id, name=name))
    await start(b, cluster("aaaa"))
    await start(b, cluster("bbbb"))
    assert fake.get(ctr.id).name == "proj-scheduler-aaaa"
    assert [kw["name"] for _, kw in fake.runs] == ["proj-scheduler-bbbb"]
    # each container got exactly one job: never another cluster's secrets
    assert {cid: len(jobs) for cid, jobs in fake.stdin.items()} == {ctr.id: 1, "id1": 1}
    assert fake.job_of(ctr.id)[2]["DASK_GATEWAY_CLUSTER_NAME"] == "aaaa"
    assert fake.job_of("id1")[2]["DASK_GATEWAY_CLUSTER_NAME"] == "bbbb"


async def test_a_dead_warm_container_is_removed_not_used() -> None:
    b, fake = make_backend(pool_size=1)
    b.containers.pool_retry_delay = 3600
    from gridhub.gateway.containers import Warm

    name = b.containers.pool_name()
    dead = fake.add(name, {})
    dead.status = "exited"  # e.g. killed by the OOM killer while it waited
    b.containers._pool.append(Warm(id=dead.id, name=name))
    await start(b)
    assert [kw["name"] for _, kw in fake.runs] == ["proj-scheduler-c0ffee"]  # the cold path
    assert name in fake.removed and dead.id not in fake.stdin


async def test_stop_pool_removes_warm_containers_only() -> None:
    b, fake = make_backend(pool_size=2)
    await b.containers.start_pool()
    await settle(b, 2)
    await start(b)
    await settle(b, 2)
    await b.containers.stop_pool()
    assert [c.name for c in fake.all] == ["proj-scheduler-c0ffee"]
    assert b.containers._pool == [] and b.containers._refill.done()


async def test_a_failed_pool_start_is_cleaned_up_and_retried() -> None:
    import docker.errors

    b, fake = make_backend(pool_size=1)
    create, calls = fake.create, []

    def flaky(*args, **kwargs):
        calls.append(kwargs["name"])
        if len(calls) == 1:  # created, then Docker failed to start it
            fake.add(kwargs["name"], kwargs["labels"])
            raise docker.errors.APIError("start failed")
        return create(*args, **kwargs)

    fake.create = flaky
    await b.containers.start_pool()
    await settle(b, 1)
    assert len(calls) == 2 and fake.removed == [calls[0]]
    assert [c.name for c in fake.all] == [calls[1]]
    await b.containers.stop_pool()


# --- a network per cluster (cluster_networks.py) ---------------------------


def on(fake: FakeDocker, net: str) -> dict[str, list[str]]:
    """Who is on a network, by name, with their aliases."""
    return {c.name: c.networks[net] for c in fake.all if net in c.networks}


async def test_each_cluster_has_a_network_shared_only_with_traefik_and_the_gateway() -> None:
    """Security: one user's code on its scheduler reaches no other scheduler
    (on one shared network it could reach every dashboard)."""
    b, fake = make_backend()
    fake.member("traefik", ["gridhub.internal", "traefik"])
    fake.member("gateway", ["gateway"])
    await start(b, cluster("aaaa"))
    await start(b, cluster("bbbb"))
    for c in ("aaaa", "bbbb"):
        assert on(fake, f"proj_schedulers-{c}") == {
            f"proj-scheduler-{c}": [f"scheduler-{c}"],
            # under their aliases on the schedulers' network: the names a
            # scheduler dials (the public host, the gateway's API) resolve
            "traefik": ["gridhub.internal", "traefik"],
            "gateway": ["gateway"],
        }
    # the schedulers' network has no scheduler
    assert set(on(fake, "proj_schedulers")) == {"traefik", "gateway"}
    a, bb = fake.nets["proj_schedulers-aaaa"], fake.nets["proj_schedulers-bbbb"]
    assert a["labels"]["com.docker.compose.project"] == "proj"
    assert {a["subnet"], bb["subnet"]} == {"10.253.0.0/28", "10.253.0.16/28"}

    # a cluster's end takes its network, and nothing of the other's
    await b.stop_scheduler(SimpleNamespace(name="aaaa", state={"container": "proj-scheduler-aaaa"}))
    assert "proj_schedulers-aaaa" not in fake.nets
    assert set(on(fake, "proj_schedulers-bbbb")) == {"proj-scheduler-bbbb", "traefik", "gateway"}
    assert set(fake.get("traefik").networks) == {"proj_schedulers", "proj_schedulers-bbbb"}


async def test_a_warm_scheduler_joins_its_clusters_network_only() -> None:
    b, fake = make_backend(pool_size=1)
    fake.member("traefik", ["gridhub.internal"])
    await b.containers.start_pool()
    await settle(b, 1)
    (warm,) = b.containers._pool
    await start(b)
    assert fake.get(warm.id).networks == {"proj_schedulers-c0ffee": ["scheduler-c0ffee"]}
    await settle(b, 1)
    # the new warm one is on no network, and never made a member of one
    (again,) = b.containers._pool
    assert fake.get(again.id).networks == {}
    assert set(on(fake, "proj_schedulers-c0ffee")) == {"proj-scheduler-c0ffee", "traefik"}
    await b.containers.stop_pool()


async def test_a_recreated_traefik_is_attached_to_every_clusters_network() -> None:
    b, fake = make_backend()
    old = fake.member("traefik", ["gridhub.internal"])
    await start(b, cluster("aaaa"))
    await start(b, cluster("bbbb"))
    # an upgrade: compose replaces Traefik; the new one is on the compose networks only
    old.remove(force=True)
    fake.member("traefik-new", ["gridhub.internal"])
    await b.do_check_clusters([])
    for c in ("aaaa", "bbbb"):
        assert on(fake, f"proj_schedulers-{c}")["traefik-new"] == ["gridhub.internal"]


async def test_subnets_skip_those_in_use_and_run_out_with_a_clear_error() -> None:
    b, fake = make_backend()
    b.containers.subnets = "10.253.0.0/27"  # two /28s
    fake.nets["elsewhere"] = {"Options": {}, "labels": {}, "subnet": "10.253.0.0/28"}
    await start(b, cluster("aaaa"))
    assert fake.nets["proj_schedulers-aaaa"]["subnet"] == "10.253.0.16/28"
    with pytest.raises(RuntimeError, match=r"No free /28 left in 10\.253\.0\.0/27.*SUBNETS"):
        await start(b, cluster("bbbb"))
    assert [kw["name"] for _, kw in fake.runs] == ["proj-scheduler-aaaa"]


async def test_gateway_start_removes_networks_no_scheduler_is_on() -> None:
    """`compose down` removes the schedulers but not their networks (compose
    does not know them): the next gateway removes them, keeps the live
    ones and joins those (it is a new container)."""
    b, fake = make_backend()
    await start(b, cluster("live"))
    fake.nets["proj_schedulers-gone"] = {
        "Options": {},
        "labels": {"org.gridhub.network-of": "proj_schedulers"},
        "subnet": "10.253.0.32/28",
    }
    fake.nets["unrelated"] = {"Options": {}, "labels": {}}
    b2, _ = make_backend()
    b2.containers._client = fake
    fake.member("gateway-new", ["gateway"])
    await b2.containers.start_pool()
    for _ in range(200):
        if "gateway-new" in on(fake, "proj_schedulers-live"):
            break
        await asyncio.sleep(0.01)
    assert "proj_schedulers-gone" not in fake.nets
    assert {"proj_schedulers-live", "unrelated"} <= set(fake.nets)
    assert set(on(fake, "proj_schedulers-live")) == {"proj-scheduler-live", "gateway-new"}
    await b2.containers.stop_pool()


async def test_a_member_attached_meanwhile_or_gone_does_not_fail_a_start() -> None:
    """The periodic check and a cluster's start may attach the same member at
    once (Docker refuses the second), and a member may be being replaced."""
    import docker.errors

    b, fake = make_backend()
    traefik = fake.member("traefik", ["gridhub.internal"])
    gone = fake.member("old-gateway", ["gateway"])
    connect, inspect = fake.connect, fake.inspect_container

    def racing(cid, net, aliases):
        if cid == traefik.id:  # attached by the check just before
            connect(cid, net, aliases)
            raise docker.errors.APIError("endpoint with name traefik already exists")
        return connect(cid, net, aliases)

    def inspect_gone(cid):
        if cid == gone.id:
            raise docker.errors.NotFound(cid)
        return inspect(cid)

    fake.api.connect_container_to_network = racing
    fake.api.inspect_container = inspect_gone
    await start(b)
    assert set(on(fake, "proj_schedulers-c0ffee")) == {"proj-scheduler-c0ffee", "traefik"}
