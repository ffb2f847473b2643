"""The gateway's warm scheduler containers with real Docker and the notebook
image (gridhub.gateway.containers, scheduler_bootstrap): a warm container
waits on no network, then takes its cluster's job over the attach socket and
runs a TLS scheduler that a client with the cluster's key reaches at the
cluster's alias (scheduler-<cluster>, connected when it is taken); no
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
def network():
    name = f"pooltest-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--internal", "--label", f"{TEST_LABEL}={RUN_ID}", name)
    yield name
    left = docker("ps", "-aq", "--filter", f"network={name}").stdout.split()
    if left:
        docker("rm", "-f", *left, check=False)
    docker("network", "rm", name, check=False)


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
    assert info["NetworkSettings"]["Networks"][network]["Aliases"][0] == host
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
    out = docker(
        "run",
        "--rm",
        "--network",
        network,
        "--label",
        f"{TEST_LABEL}={RUN_ID}",
        "-e",
        f"PEM={cert}",
        "-e",
        f"KEY={key}",
        "--entrypoint",
        "python",
        notebook_image,
        "-c",
        probe,
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
    await pool.remove(name)

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
    await cold.remove(f"{prefix}{cluster2}")

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "scheduler-pool.json").write_text(
        json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=1)
    )
    print("TIMINGS", timings)
