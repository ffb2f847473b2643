"""The gateway's warm scheduler containers with real Docker and the notebook
image (gridhub.gateway.containers, scheduler_bootstrap): a warm container
waits on no network, then takes its cluster's job over the attach socket and
runs a TLS scheduler that a client with the cluster's key reaches at the
cluster's alias (scheduler-<cluster>, on the cluster's own network, connected
when it is taken; the schedulers' network's member is attached to it, another
cluster's scheduler reaches nothing of it); no
credential is in `docker inspect` or the logs; the pool refills, leftovers of
an earlier gateway go. Timings of each step go to artifacts/scheduler-pool.json.

The compose facility test (test_compose_facility.py) proves the whole path
(gateway, Traefik, grid worker); this one isolates the container mechanics.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dockerharness import RUN_ID, TEST_LABEL, docker

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def wait_log(name: str, text: str, deadline: float) -> str:
    while True:
        p = docker("logs", name, check=False)
        out = p.stdout + p.stderr
        if text in out:
            return out
        assert time.monotonic() < deadline, f"{name}: no {text!r} in\n{out[-2000:]}"
        time.sleep(0.1)


@pytest.fixture
def network(notebook_image):
    """The schedulers' network, with a member (as Traefik and the gateway
    are in a facility) that every cluster's network gets."""
    from gridhub.gateway.cluster_networks import LABEL

    name = f"pooltest-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--internal", "--label", f"{TEST_LABEL}={RUN_ID}", name)
    docker(
        *("run", "-d", "--name", f"{name}-member", "--network", name, "--network-alias", "member"),
        *("--label", f"{TEST_LABEL}={RUN_ID}", "--entrypoint", "sleep", notebook_image, "600"),
    )
    yield name
    clusters = docker("network", "ls", "-q", "--filter", f"label={LABEL}={name}").stdout.split()
    for net in [name, *clusters]:
        left = docker("ps", "-aq", "--filter", f"network={net}").stdout.split()
        if left:
            docker("rm", "-f", *left, check=False)
        docker("network", "rm", net, check=False)


def keypair(cluster: str) -> tuple[str, str]:
    from dask_gateway_server.tls import new_keypair

    cert, key = new_keypair(cluster)
    return cert.decode(), key.decode()


def scheduler_command(host: str) -> list[str]:
    return [
        "python",
        "-m",
        "distributed.cli.dask_scheduler",
        "--protocol",
        "tls",
        "--host",
        host,
        "--port",
        "8786",
        "--dashboard-address",
        f"{host}:8787",
    ]


def test_warm_scheduler_container_runs_its_one_cluster(notebook_image, network) -> None:
    # in a thread of its own: the e2e session's Playwright (sync API) keeps an
    # event loop running in this one, where asyncio.run is refused
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _warm_scheduler_container(notebook_image, network)).result()


async def _warm_scheduler_container(notebook_image: str, network: str) -> None:
    from gridhub.gateway.containers import SchedulerContainers

    prefix = f"{network}-scheduler-"
    pool = SchedulerContainers(
        image=notebook_image,
        network=network,
        name_prefix=prefix,
        labels={TEST_LABEL: RUN_ID},
        pool_size=1,
    )
    timings: dict[str, float] = {}
    # a warm container an earlier gateway left: removed, never handed out
    docker(
        "create",
        "--name",
        f"{prefix}pool-0ld",
        "--label",
        f"{TEST_LABEL}={RUN_ID}",
        "--label",
        f"{pool.LABEL}={prefix}",
        notebook_image,
        "true",
    )
    t0 = time.monotonic()
    await pool.start_pool()
    while not pool._pool:
        assert time.monotonic() - t0 < 120, "no warm container"
        await asyncio.sleep(0.1)
    timings["pool_container_started"] = time.monotonic() - t0
    (warm,) = pool._pool
    assert not docker("ps", "-aq", "--filter", f"name={prefix}pool-0ld").stdout.strip()
    wait_log(warm.name, "waiting for the job", time.monotonic() + 120)
    timings["pool_container_ready"] = time.monotonic() - t0
    # while it waits it is on no network: nothing reaches it
    info = json.loads(docker("inspect", warm.id).stdout)[0]
    assert info["NetworkSettings"]["Networks"] in ({}, None), info["NetworkSettings"]

    cluster = "c0ffee" + uuid.uuid4().hex[:8]
    cert, key = keypair(cluster)
    token = uuid.uuid4().hex
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
        "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": cert,
        "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": key,
        "DASK_GATEWAY_API_TOKEN": token,
    }
    host = f"scheduler-{cluster}"
    t1 = time.monotonic()
    await pool.start(cluster, scheduler_command(host), env)
    timings["handover"] = time.monotonic() - t1
    name = f"{prefix}{cluster}"
    logs = wait_log(name, "Scheduler at:", time.monotonic() + 60)
    timings["handover_to_scheduler_listening"] = time.monotonic() - t1
    assert "RuntimeWarning" not in logs and "Traceback" not in logs, logs[-2000:]

    # nothing of the credentials where Docker shows or keeps them
    info = json.loads(docker("inspect", name).stdout)[0]
    shown = json.dumps(info) + logs
    key_body = key.split("-----")[2].strip().splitlines()[1]
    for secret in (key_body, token):
        assert secret not in shown
    assert info["Id"] == warm.id
    # on its cluster's own network only, under the cluster's alias
    (own,) = info["NetworkSettings"]["Networks"]
    assert own == f"{network}-{cluster}"
    assert info["NetworkSettings"]["Networks"][own]["Aliases"][0] == host
    assert info["Config"]["User"] == "65534:65534" and info["HostConfig"]["ReadonlyRootfs"]
    assert info["HostConfig"]["CapDrop"] == ["ALL"] and info["Mounts"] == []

    # a client holding the cluster's key pair reaches it at that alias
    probe = (
        "import os\n"
        "from distributed import Client\n"
        "from distributed.security import Security\n"
        "pem = os.environ['PEM']\n"
        "s = Security(tls_ca_file=pem, tls_client_cert=pem, tls_client_key=os.environ['KEY'],"
        " require_encryption=True)\n"
        f"c = Client('tls://{host}:8786', security=s, timeout=30)\n"
        "print('SCHEDULER', c.scheduler_info()['address'])\n"
    )
    # from the member of the schedulers' network, attached to the cluster's
    out = docker(
        *("exec", "-e", f"PEM={cert}", "-e", f"KEY={key}", f"{network}-member"),
        *("python", "-c", probe),
        timeout=120,
    ).stdout
    # (it names itself by its IP address on the network, as distributed does)
    assert "SCHEDULER tls://" in out and ":8786" in out, out

    # the pool refilled with a new container, never the used one
    t2 = time.monotonic()
    while not pool._pool:
        assert time.monotonic() - t2 < 120, "pool did not refill"
        await asyncio.sleep(0.1)
    (again,) = pool._pool
    assert again.id != warm.id
    await pool.stop_pool()
    assert not docker("ps", "-aq", "--filter", f"name={prefix}pool-").stdout.strip()
    assert docker("ps", "-q", "--filter", f"name={name}").stdout.strip()  # the cluster's stays

    # the cold path, as with pool_size 0: the same bootstrap, handed the job at once
    cold = SchedulerContainers(
        image=notebook_image, network=network, name_prefix=prefix, labels={TEST_LABEL: RUN_ID}
    )
    t3 = time.monotonic()
    cluster2 = "cafe" + uuid.uuid4().hex[:8]
    await cold.start(
        cluster2, scheduler_command(f"scheduler-{cluster2}"), {**env, "DASK_GATEWAY_API_TOKEN": "x"}
    )
    wait_log(f"{prefix}{cluster2}", "Scheduler at:", time.monotonic() + 120)
    timings["cold_create_to_scheduler_listening"] = time.monotonic() - t3
    # one cluster's scheduler (its user's code) reaches nothing of the other's
    reach = (
        "import socket\n"
        "for port in (8786, 8787):\n"
        "    try:\n"
        f"        socket.create_connection(('{host}', port), timeout=5).close()\n"
        "        print('OPEN', port)\n"
        "    except OSError as e:\n"
        "        print('CLOSED', port, e)\n"
    )
    out = docker("exec", f"{prefix}{cluster2}", "python", "-c", reach, timeout=60).stdout
    assert "OPEN" not in out and out.count("CLOSED") == 2, out
    # the member reaches both
    out = docker("exec", f"{network}-member", "python", "-c", reach, timeout=60).stdout
    assert "OPEN 8786" in out, out

    # a cluster's end takes its network; the member leaves it first
    await cold.remove(f"{prefix}{cluster2}")
    await cold.remove_network(cluster2)
    await pool.remove(name)
    await pool.remove_network(cluster)
    for c in (cluster, cluster2):
        assert not docker("network", "ls", "-q", "--filter", f"name={network}-{c}").stdout.strip()

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "scheduler-pool.json").write_text(
        json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=1)
    )
    print("TIMINGS", timings)
