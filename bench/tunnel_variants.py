"""Candidate data paths for the reverse path, side by side on raw bytes.

    sudo .venv/bin/python bench/tunnel_variants.py [--mb 100] [--repeat 3]

Same sink, client and namespaces as ``bench/tunnel_raw.py`` (a TLS server
with the cluster's certificate in a worker namespace; the host dials it and
pulls or pushes N MB, Dask's TLS end to end). Rows:

- ``direct``: the sink on host loopback, no Traefik.
- ``passthru``: Traefik's SNI passthrough alone (client -> Traefik -> sink).
- ``a-asyncssh``: the current path (gridhub-worker, asyncssh both sides).
- ``a-plain``: the same asyncssh client without the outer TLS: plain TCP
  to a second Traefik's non-TLS entrypoint -> the TunnelServer (PROXY v2).
- ``b-<proxy>``: OpenSSH ``ssh -N -R <route>:0:...`` in the namespace
  against the same asyncssh TunnelServer, through the same Traefik; the TLS
  leg to Traefik (SNI gridhub-tunnel, terminated there) is ssh's
  ProxyCommand: ``openssl s_client``, ``socat OPENSSL:`` or a minimal
  uvloop TLS pipe in Python (``pypipe``).
- ``b-plain``: that ssh without ProxyCommand, as ``a-plain``.
- ``c-sshd``: OpenSSH on both sides: a throwaway sshd on loopback (its own
  config, key restricted with ``restrict,port-forwarding,permitlisten``)
  behind a second Traefik (TLS-terminated SNI route to sshd, passthrough
  route to sshd's forwarded port), ssh + ``openssl s_client`` in the
  namespace; ``c-plain``: plain SSH to that Traefik's TLS entrypoint (a
  non-TLS ``HostSNI(`*`)`` router next to the TLS ones).
- ``d-floor``: no SSH: two socat TCP relays (the worker-side one dials out
  through Traefik, plain TCP) and the client through Traefik's passthrough;
  what any relay design through Traefik costs at least.

Prints MB/s (best of --repeat) and CPU milliseconds per MB per process
("(..k)": kernel part), with the load average: the machine is shared, so
CPU per MB is the figure to compare. Needs root, ip netns, nft, ssh, sshd,
openssl, socat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "integration")]
from processes import free_port, wait_for  # noqa: E402
from tunnel_fixtures import (  # noqa: E402
    TRAEFIK,
    Proc,
    tls_probe,
)
from tunnel_raw import (  # noqa: E402
    child_pid,
    client_ctx,
    cpu_seconds,
    sink_and_facility,
    transfer,
)

SSHD = "/usr/sbin/sshd"
# ProxyCommand in Python: stdin/stdout <-> TLS, C transports (uvloop), with
# flow control both ways; nothing else.
TLS_PIPE = r"""
import asyncio, ssl, sys
host, port, sni, ca = sys.argv[1:5]

class Relay(asyncio.Protocol):
    peer = None  # the other side's transport
    def __init__(self, done): self.done = done
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.peer.write(d)
    def eof_received(self):
        self.done.set_result(None) if not self.done.done() else None
    def connection_lost(self, exc): self.eof_received()
    # our transport is full: stop reading the other side
    def pause_writing(self): self.other.pause_reading()
    def resume_writing(self): self.other.resume_reading()

async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    ctx = ssl.create_default_context(cafile=ca)
    net, stdin, stdout = Relay(done), Relay(done), Relay(done)
    # each side's peer exists before the side can receive
    tout, _ = await loop.connect_write_pipe(lambda: stdout, sys.stdout)
    net.peer = tout
    tnet, _ = await loop.create_connection(lambda: net, host, int(port), ssl=ctx,
                                           server_hostname=sni)
    stdin.peer = stdout.other = tnet
    tin, _ = await loop.connect_read_pipe(lambda: stdin, sys.stdin)
    net.other = tin
    await done

import uvloop
uvloop.run(main())
"""


# gridhub-worker's asyncssh client (same options, uvloop) without the TLS
# leg: what dropping the outer TLS alone would give.
ASYNCSSH_PLAIN = r"""
import sys, asyncssh
from gridhub.tunnel.common import run_event_loop
from gridhub.tunnel.worker import SSH_OPTIONS
host, port, key, route, lport, hostkey = sys.argv[1:7]
async def main():
    conn = await asyncssh.connect(
        host, int(port), username="alpha", client_keys=[asyncssh.read_private_key(key)],
        known_hosts=([asyncssh.import_public_key(hostkey)], [], []), agent_path=None,
        preferred_auth="publickey", config=None, **SSH_OPTIONS)
    await conn.forward_remote_port(route, 0, "127.0.0.1", int(lport))
    await conn.wait_closed()
run_event_loop(main())
"""


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += parents.get(q, [])
    return out


def tree_cpu(pid: int) -> tuple[float, float]:
    u = s = 0.0
    for q in tree_pids(pid):
        a, b = cpu_seconds(q)
        u, s = u + a, s + b
    return u, s


class Variant:
    """One row: where the client dials and which processes to account."""

    def __init__(self, name: str, port: int, sni: str, procs: dict[str, int]):
        self.name, self.port, self.sni, self.procs = name, port, sni, procs

    def before(self) -> None:
        """Called before each transfer (per-connection processes)."""

    def after(self) -> dict[str, tuple[float, float]]:
        """CPU (utime, stime) of per-connection processes that ended."""
        return {}


class Floor(Variant):
    """Two one-shot socat relays per transfer: ``fac`` accepts the worker
    side's outbound connection (via Traefik, plain TCP) then the client's
    (via Traefik's passthrough) and splices them; ``wrk`` dials out and
    connects to the sink."""

    def __init__(self, port, sni, procs, a_port, b_port, node_cmd, public, plain_port, sink):
        super().__init__("d-floor", port, sni, procs)
        self.a, self.b = a_port, b_port
        self.node_cmd, self.public, self.plain, self.sink = node_cmd, public, plain_port, sink
        self.running: dict[str, subprocess.Popen] = {}

    def before(self) -> None:
        bs = ["-b", str(1 << 18)]
        fac = subprocess.Popen(
            [
                "socat",
                *bs,
                f"TCP-LISTEN:{self.b},bind=127.0.0.1,reuseaddr",
                f"TCP-LISTEN:{self.a},bind=127.0.0.1,reuseaddr",
            ]
        )
        wait_for(lambda: _listening(self.b), 10, "floor relay")
        wrk = subprocess.Popen(
            self.node_cmd(
                "socat", *bs, f"TCP:{self.public}:{self.plain}", f"TCP:127.0.0.1:{self.sink}"
            )
        )
        wait_for(lambda: _listening(self.a), 10, "floor relay accepted the worker side")
        self.running = {"socat-fac": fac, "socat-wrk": wrk}

    def after(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, p in self.running.items():
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            out[name] = (ru.ru_utime, ru.ru_stime)
        self.running = {}
        return out


def _listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return bool(out.strip())


def _cpu(name: str, pid: int) -> tuple[float, float]:
    # sshd forks per connection: count its whole tree; ssh's ProxyCommand
    # child is a row of its own.
    return tree_cpu(pid) if name == "sshd" else cpu_seconds(pid)


def measure(v: Variant, ctx, mode: str, mb: int, repeat: int) -> str:
    nbytes = mb * 2**20
    best = 0.0
    acc: dict[str, list[float]] = {}

    def add(name, u, s):
        a = acc.setdefault(name, [0.0, 0.0])
        a[0] += u
        a[1] += s

    for _ in range(repeat):
        v.before()
        c0 = {k: _cpu(k, p) for k, p in v.procs.items()}
        best = max(best, transfer(v.port, v.sni, ctx, mode, nbytes))
        c1 = {k: _cpu(k, p) for k, p in v.procs.items()}
        for k in v.procs:
            add(k, c1[k][0] - c0[k][0], c1[k][1] - c0[k][1])
        for k, (u, s) in v.after().items():
            add(k, u, s)
    total = mb * repeat
    cpu = " ".join(
        f"{k}={(u + s) / total * 1000:.1f}({s / total * 1000:.1f}k)"
        for k, (u, s) in acc.items()
        if u + s > 0.02
    )
    sum_ms = sum(u + s for u, s in acc.values()) / total * 1000
    load = os.getloadavg()[0]
    return (
        f"{mode:<5}{v.name:<13}{best:8.1f} MB/s  total={sum_ms:5.1f} ms/MB  load={load:.1f}  {cpu}"
    )


def ssh_cmd(
    user: str,
    key: Path,
    known_hosts: Path,
    alias: str,
    proxy: str | None,
    forward: str,
    dest: tuple[str, int] | None = None,
) -> list[str]:
    """ssh -N -R: through ``proxy`` (a ProxyCommand doing the TLS leg) or,
    without one, plain TCP to ``dest``."""
    where = ["-o", f"ProxyCommand={proxy}", alias] if proxy else ["-p", str(dest[1]), dest[0]]
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-N",
        "-T",
        "-i",
        str(key),
        "-l",
        user,
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"HostKeyAlias={alias}",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "Ciphers=aes128-gcm@openssh.com",
        "-o",
        "Compression=no",
        "-o",
        "LogLevel=ERROR",
        "-R",
        forward,
        *where,
    ]


def proxy_commands(tmp: Path, host: str, port: int, ca: Path) -> dict[str, str]:
    pipe = tmp / "tls_pipe.py"
    pipe.write_text(TLS_PIPE)
    return {
        "openssl": (
            f"openssl s_client -quiet -verify_return_error -verify_hostname gridhub-tunnel"
            f" -CAfile {ca} -servername gridhub-tunnel -connect {host}:{port}"
        ),
        "socat": (
            f"socat -b {1 << 18} - OPENSSL:{host}:{port},cafile={ca},"
            f"snihost=gridhub-tunnel,commonname=gridhub-tunnel"
        ),
        "pypipe": f"{sys.executable} {pipe} {host} {port} gridhub-tunnel {ca}",
    }


def start_sshd(tmp: Path, pubkey: str, fwd_ports: list[int]) -> tuple[Proc, int, str]:
    """A throwaway sshd on loopback: root login by key only, remote
    forwarding to one loopback port only, nothing else."""
    d = tmp / "sshd"
    d.mkdir()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privsep dir
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True
    )
    listen = ",".join(f'permitlisten="127.0.0.1:{p}"' for p in fwd_ports)
    (d / "authorized_keys").write_text(f"restrict,port-forwarding,{listen} {pubkey}\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"""ListenAddress 127.0.0.1:{port}
HostKey {d / "host_key"}
PidFile none
AuthorizedKeysFile {d / "authorized_keys"}
StrictModes no
AllowUsers root
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding remote
AllowStreamLocalForwarding no
GatewayPorts no
X11Forwarding no
AllowAgentForwarding no
PermitTTY no
ForceCommand /bin/false
Ciphers aes128-gcm@openssh.com
ClientAliveInterval 15
"""
    )
    p = Proc("sshd", [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], d / "sshd.log").start()
    wait_for(lambda: _listening(port), 10, "sshd")
    host_pub = (d / "host_key.pub").read_text().split()
    return p, port, f"{host_pub[0]} {host_pub[1]}"


def start_traefik2(
    tmp: Path, fac, sshd_port: int, fwds: list[int], floor_a: int, floor_b: int, tunnel: str
):
    """A second Traefik for the rows the fixture's Traefik has no routes
    for: sshd, the floor, and SSH without the outer TLS on entrypoints of
    (plain TCP, HostSNI(`*`)): ``sshplain`` -> the TunnelServer (PROXY v2, an
    entrypoint of its own), and plain SSH on ``tun`` itself -> sshd (one
    public port for TLS and SSH)."""
    d = tmp / "traefik2"
    d.mkdir()
    tun, plain, ping, sshplain = (free_port() for _ in range(4))

    def lb(port):
        return {"loadBalancer": {"servers": [{"address": f"127.0.0.1:{port}"}]}}

    dyn = {
        "tls": {
            "stores": {
                "default": {
                    "defaultCertificate": {
                        "certFile": str(fac.facility_crt),
                        "keyFile": str(fac.dir / "facility.key"),
                    }
                }
            }
        },
        "tcp": {
            "routers": {
                "sshd": {
                    "entryPoints": ["tun"],
                    "rule": "HostSNI(`gridhub-tunnel`)",
                    "service": "sshd",
                    "tls": {},
                },
                **{
                    f"sshfwd{i}": {
                        "entryPoints": ["tun"],
                        "rule": f"HostSNI(`daskgateway-sshfwd{i}`)",
                        "service": f"sshfwd{i}",
                        "tls": {"passthrough": True},
                    }
                    for i in range(len(fwds))
                },
                "sshplain": {
                    "entryPoints": ["sshplain"],
                    "rule": "HostSNI(`*`)",
                    "service": "tunnel",
                },
                # the same entrypoint as the TLS routes: Traefik sees no
                # ClientHello (ssh speaks first) and takes the non-TLS route
                "sshdplain": {
                    "entryPoints": ["tun"],
                    "rule": "HostSNI(`*`)",
                    "service": "sshd",
                },
                # as the gateway's config: unknown SNI -> closed (a TLS
                # catch-all next to the non-TLS one below)
                "nosni": {
                    "entryPoints": ["tun"],
                    "rule": "HostSNI(`*`)",
                    "priority": 1,
                    "service": "nosni",
                    "tls": {"passthrough": True},
                },
                "floora": {
                    "entryPoints": ["tun"],
                    "rule": "HostSNI(`daskgateway-floor`)",
                    "service": "floora",
                    "tls": {"passthrough": True},
                },
                # plain TCP, alone on its entrypoint: forwarded at once
                "floorb": {"entryPoints": ["plain"], "rule": "HostSNI(`*`)", "service": "floorb"},
            },
            "serversTransports": {"pp2": {"proxyProtocol": {"version": 2}}},
            "services": {
                "nosni": {"loadBalancer": {"servers": []}},
                "sshd": lb(sshd_port),
                **{f"sshfwd{i}": lb(p) for i, p in enumerate(fwds)},
                "tunnel": {
                    "loadBalancer": {
                        "servers": [{"address": tunnel}],
                        "serversTransport": "pp2",
                    }
                },
                "floora": lb(floor_a),
                "floorb": lb(floor_b),
            },
        },
    }
    (d / "dynamic.yml").write_text(yaml.safe_dump(dyn))
    static = {
        "entryPoints": {
            "tun": {"address": f":{tun}"},
            "plain": {"address": f":{plain}"},
            "sshplain": {"address": f":{sshplain}"},
            "traefik": {"address": f"127.0.0.1:{ping}"},
        },
        "ping": {"entryPoint": "traefik"},
        "providers": {"file": {"filename": str(d / "dynamic.yml"), "watch": False}},
        "log": {"level": "INFO"},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    (d / "traefik.yml").write_text(yaml.safe_dump(static))
    p = Proc("traefik2", [TRAEFIK, f"--configFile={d / 'traefik.yml'}"], d / "traefik.log").start()
    import httpx

    wait_for(lambda: httpx.get(f"http://127.0.0.1:{ping}/ping").status_code == 200, 20, "traefik2")
    return p, tun, plain, sshplain


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated row name prefixes")
    ns = p.parse_args()
    for tool in ("ssh", "openssl", "socat", SSHD):
        if not shutil.which(tool):
            sys.exit(f"needs {tool} (apt-get install openssh-client openssh-server socat)")
    with tempfile.TemporaryDirectory(prefix="gridhub-variants-") as tmp:
        tmp = Path(tmp)
        sink, dport, fac = sink_and_facility(tmp)
        extra: list[Proc] = []
        try:
            net = fac.network
            alpha = fac.creds["alpha"]
            ctx = client_ctx(alpha)
            env = {**os.environ, **alpha.worker_env()}

            def sink_proc(name, cmd_prefix, port):
                pr = Proc(
                    name,
                    [
                        *cmd_prefix,
                        sys.executable,
                        str(sink),
                        "--listen-address",
                        f"tls://127.0.0.1:{port}",
                    ],
                    tmp / f"{name}.log",
                    env=env,
                ).start()
                extra.append(pr)
                return pr

            direct = sink_proc("sink-direct", [], dport)
            # (a) gridhub-worker runs the sink as its "dask worker"
            os.environ["GRIDHUB_DASK_WORKER_CMD"] = f"{sys.executable} {sink}"
            w = fac.start_worker("raw")
            del os.environ["GRIDHUB_DASK_WORKER_CMD"]
            # (b), (c), (d): a second namespace, its own sink
            node = net.add_node()
            sport = free_port()
            nsink = sink_proc("sink-ns", node.cmd(), sport)
            # this namespace may also reach the second Traefik's ports
            fwd_tls, fwd_plain, floor_a, floor_b = (free_port() for _ in range(4))
            pub = subprocess.run(
                ["ssh-keygen", "-y", "-f", str(alpha.key)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            sshd, sshd_port, sshd_hostkey = start_sshd(tmp, pub, [fwd_tls, fwd_plain])
            extra.append(sshd)
            tunnel_addr = json.loads((fac.dir / "tunnel-ready.json").read_text())["tunnel"]
            t2, t2_tun, t2_plain, t2_ssh = start_traefik2(
                tmp, fac, sshd_port, [fwd_tls, fwd_plain], floor_a, floor_b, tunnel_addr
            )
            extra.append(t2)
            # the non-TLS SSH router must not open the door to unknown SNIs
            if tls_probe(t2_tun, "daskgateway-unknown"):
                sys.exit("traefik2 answered an unknown SNI")
            ports = ", ".join(str(p) for p in (t2_tun, t2_plain, t2_ssh))
            subprocess.run(
                [
                    "nft",
                    "insert",
                    "rule",
                    "inet",
                    net.table,
                    "input",
                    "iifname",
                    f"{net.prefix}h*",
                    "tcp",
                    "dport",
                    f"{{ {ports} }}",
                    "accept",
                ],
                check=True,
            )

            import asyncssh
            from gridhub.tunnel.server import HOST_KEY_NAME

            hk = asyncssh.read_private_key(str(fac.dir / "tunnel-state" / HOST_KEY_NAME))
            kh = tmp / "known_hosts"
            kh.write_text(
                f"gridhub-tunnel {hk.export_public_key().decode().strip()}\n"
                f"gridhub-sshd {sshd_hostkey}\n"
            )

            def ssh(name, user, alias, proxy, forward, dest=None) -> Proc:
                cmd = ssh_cmd(user, alpha.key, kh, alias, proxy, forward, dest)
                pr = Proc(f"ssh-{name}", node.cmd(*cmd), tmp / f"ssh-{name}.log").start()
                extra.append(pr)
                return pr

            # (b): OpenSSH client -> the asyncssh TunnelServer
            proxies = proxy_commands(tmp, net.public_ip, fac.dask_port, fac.facility_crt)
            ssh_b = {
                pname: ssh(
                    pname, "alpha", "gridhub-tunnel", pcmd, f"alpha-ssh{pname}:0:127.0.0.1:{sport}"
                )
                for pname, pcmd in proxies.items()
            }
            ssh_b["plain"] = ssh(
                "plain",
                "alpha",
                "gridhub-tunnel",
                None,
                f"alpha-sshplain:0:127.0.0.1:{sport}",
                (net.public_ip, t2_ssh),
            )
            aplain = tmp / "asyncssh_plain.py"
            aplain.write_text(ASYNCSSH_PLAIN)
            a_plain = Proc(
                "asyncssh-plain",
                node.cmd(
                    sys.executable,
                    str(aplain),
                    net.public_ip,
                    str(t2_ssh),
                    str(alpha.key),
                    "alpha-asyncplain",
                    str(sport),
                    hk.export_public_key().decode().strip(),
                ),
                tmp / "asyncssh-plain.log",
            ).start()
            extra.append(a_plain)
            # (c): OpenSSH both sides
            proxy_c = proxy_commands(tmp, net.public_ip, t2_tun, fac.facility_crt)["openssl"]
            # root: the throwaway sshd's only account
            ssh_c = ssh(
                "sshd", "root", "gridhub-sshd", proxy_c, f"127.0.0.1:{fwd_tls}:127.0.0.1:{sport}"
            )
            ssh_cp = ssh(
                "sshd-plain",
                "root",
                "gridhub-sshd",
                None,
                f"127.0.0.1:{fwd_plain}:127.0.0.1:{sport}",
                (net.public_ip, t2_tun),
            )
            routes = fac.wait_tunnel_routes(2 + len(ssh_b))
            sni = {
                r.split("`")[1].removeprefix("daskgateway-"): r.split("`")[1]
                for r in (v["rule"] for v in routes.values())
            }
            wait_for(lambda: _listening(fwd_tls) and _listening(fwd_plain), 20, "sshd forwards")
            raw_sni = next(s for k, s in sni.items() if k.startswith("alpha-raw"))
            base = {"client": os.getpid()}
            rows = [
                Variant("direct", dport, "x", {**base, "sink": direct.pid}),
                Variant(
                    "passthru",
                    fac.dask_port,
                    "daskgateway-passthrough",
                    {**base, "traefik": fac.traefik.pid, "sink": direct.pid},
                ),
                Variant(
                    "a-asyncssh",
                    fac.dask_port,
                    raw_sni,
                    {
                        **base,
                        "traefik": fac.traefik.pid,
                        "tunnel": fac.tunnel.pid,
                        "gridhub-worker": w.pid,
                        "sink": wait_for(lambda: child_pid(w.pid), 10, "sink pid"),
                    },
                ),
            ]

            rows.append(
                Variant(
                    "a-plain",
                    fac.dask_port,
                    sni["alpha-asyncplain"],
                    {
                        **base,
                        "traefik": fac.traefik.pid,
                        "traefik2": t2.pid,
                        "tunnel": fac.tunnel.pid,
                        "asyncssh-client": a_plain.pid,
                        "sink": nsink.pid,
                    },
                )
            )

            def proxy_of(pr: Proc) -> dict[str, int]:
                kids = [q for q in tree_pids(pr.pid) if q != pr.pid]
                return {"proxy": kids[0]} if kids else {}

            for pname, pr in ssh_b.items():
                front = {"traefik": fac.traefik.pid}
                if pname == "plain":  # the worker leg crosses traefik2
                    front["traefik2"] = t2.pid
                rows.append(
                    Variant(
                        f"b-{pname}",
                        fac.dask_port,
                        sni[f"alpha-ssh{pname}"],
                        {
                            **base,
                            **front,
                            "tunnel": fac.tunnel.pid,
                            "ssh": pr.pid,
                            **proxy_of(pr),
                            "sink": nsink.pid,
                        },
                    )
                )
            for name, pr, i in (("c-sshd", ssh_c, 0), ("c-plain", ssh_cp, 1)):
                rows.append(
                    Variant(
                        name,
                        t2_tun,
                        f"daskgateway-sshfwd{i}",
                        {
                            **base,
                            "traefik2": t2.pid,
                            "sshd": sshd.pid,
                            "ssh": pr.pid,
                            **proxy_of(pr),
                            "sink": nsink.pid,
                        },
                    )
                )
            rows.append(
                Floor(
                    t2_tun,
                    "daskgateway-floor",
                    {**base, "traefik2": t2.pid, "sink": nsink.pid},
                    floor_a,
                    floor_b,
                    node.cmd,
                    net.public_ip,
                    t2_plain,
                    sport,
                )
            )
            only = [o for o in ns.only.split(",") if o]
            rows = [r for r in rows if not only or any(r.name.startswith(o) for o in only)]
            print(
                f"{ns.mb} MB x {ns.repeat} per row; cpu ms/MB per process ((..k) kernel); "
                f"{os.cpu_count()} cores",
                flush=True,
            )
            for mode in ("pull", "push"):
                for v in rows:
                    print(measure(v, ctx, mode, ns.mb, ns.repeat), flush=True)
        except BaseException:
            for pr in [*extra, fac.tunnel]:
                print(f"===== {pr.name}\n{pr.text()[-1500:]}", file=sys.stderr)
            raise
        finally:
            for pr in reversed(extra):
                pr.stop()
            fac.stop()


if __name__ == "__main__":
    main()
