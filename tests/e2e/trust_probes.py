"""What a student's notebook code tries against the facility (issue 15).

Not imported by the tests: its source is sent to ``python - <request JSON>``
in student A's server container (docker exec, as the server's own user with
its own environment). It prints one JSON line: what A's code could reach and
read.

- ``ports``: each internal host:port from A's notebook: open / refused /
  unresolved / timeout.
- ``scheduler``: run on A's own scheduler (client.run_on_scheduler, which any
  cluster owner can call): which of the given secret values it finds in any
  file it can read or in any process's environment or command line, and
  which internal host:ports it reaches.
- ``other_cluster``: A connecting to B's cluster through the gateway, and
  stopping it; A's scheduler calling the gateway API on B's cluster with A's
  own cluster token; A's cluster credentials against B's scheduler.
"""

import json
import os
import socket
import sys


def reach(targets, timeout=3.0):
    out = {}
    for target in targets:
        host, port = target.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            out[target] = "open"
        except socket.gaierror:
            out[target] = "unresolved"
        except ConnectionRefusedError:
            out[target] = "refused"
        except OSError as exc:
            out[target] = type(exc).__name__
    return out


async def snoop(needles, targets, other_cluster, api_url):
    """Runs on the scheduler, in a thread: its event loop must keep
    heartbeating (name lookups on an internal network can take seconds)."""
    import asyncio

    return await asyncio.to_thread(_snoop, needles, targets, other_cluster, api_url)


def _snoop(needles, targets, other_cluster, api_url):
    """Every readable file and process environment, the ports, the API."""
    import os
    import urllib.request

    found = []

    def scan(path, data):
        for label, value in needles.items():
            if value.encode() in data:
                found.append(f"{label} in {path}")

    # (the scheduler's own /tmp too: a shared one would show others' files)
    roots = ["/srv", "/tmp", "/home", "/root", "/var", "/run", "/etc", "/mnt"]  # noqa: S108
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or os.path.getsize(path) > 4 << 20:
                        continue
                    with open(path, "rb") as fh:
                        scan(path, fh.read())
                except OSError:
                    pass
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for what in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{what}", "rb") as fh:
                        scan(f"/proc/{pid}/{what}", fh.read())
                except OSError:
                    pass
    # the gateway API with this cluster's own token, on another user's cluster
    req = urllib.request.Request(  # noqa: S310 (http: the gateway's API)
        f"{api_url}/v1/clusters/{other_cluster}",
        method="DELETE",
        headers={"Authorization": "token " + os.environ.get("DASK_GATEWAY_API_TOKEN", "")},
    )
    try:
        status = urllib.request.urlopen(req, timeout=10).status  # noqa: S310
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        status = type(exc).__name__
    return {
        "found": found,
        "ports": reach(targets),
        "stop_other_with_own_token": status,
        "uid": os.getuid(),
    }


def attempt(step):
    """The step's result, or what stopped it (the kind of refusal is the point)."""
    import asyncio

    try:
        return step()
    except (Exception, asyncio.CancelledError) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def main(request):
    from dask_gateway import Gateway
    from distributed import Client

    gateway = Gateway()
    out = {"ports": reach(request["notebook_targets"])}
    mine = gateway.connect(request["cluster"])
    client = mine.get_client()
    out["scheduler"] = attempt(
        lambda: client.run_on_scheduler(
            snoop,
            request["needles"],
            request["scheduler_targets"],
            request["other_cluster"],
            os.environ.get("DASK_GATEWAY_API_URL", "http://gateway:8000/api"),
        )
    )
    other = request["other_cluster"]
    out["connect_other"] = attempt(lambda: gateway.connect(other) and "connected")
    out["stop_other"] = attempt(lambda: gateway.stop_cluster(other) or "no error")

    def other_scheduler():
        # B's scheduler through Traefik, with A's own cluster credentials
        address = mine.scheduler_address.rsplit("/", 1)[0] + "/" + other
        with Client(address, security=mine.security, timeout=15) as c:
            return f"connected to {c.scheduler_info()['id']}"

    out["other_scheduler_with_own_creds"] = attempt(other_scheduler)
    print("PROBES " + json.dumps(out), flush=True)
    client.close()
    mine.close()
    gateway.close()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
