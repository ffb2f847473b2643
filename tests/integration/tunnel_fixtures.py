"""Real processes for the reverse-path tests and the benchmark.

The facility (host side): a TLS ``dask scheduler`` on loopback only, the
tunnel service (``python -m gridhub.tunnel``: TunnelServer + Traefik's HTTP
provider endpoint) and the real Traefik binary. Grid worker nodes: one
network namespace per worker, joined to the host by a veth pair; nftables on
the host lets a namespace reach only Traefik's Dask port and lets nothing on
the host open a connection into a namespace. Namespaces have no default
route, so they cannot reach each other either.

Sites (``Network.add_site``): a site's nodes share a LAN (a bridge in the
site's router namespace) and reach each other there; the router's uplink
to the host carries everything that leaves the site (its byte counters are
the relay's share), routes only to Traefik's address, and nothing on the
host opens a connection into the site. Two sites cannot reach each other.

Import explicitly: ``from tunnel_fixtures import facility_fixture  # noqa: F401``
(the fixture is named ``facility``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dask_gateway_server.tls import new_keypair
from processes import free_port, self_signed_cert, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TRAEFIK = shutil.which("traefik", path=str(VENV_BIN)) or str(ROOT / ".venv/bin/traefik")

CLUSTERS = ("alpha", "beta")


def have_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None


# ---------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    name: str
    cmd: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        f = open(self.log, "ab")
        self.popen = subprocess.Popen(
            self.cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        f.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, grace: float = 5.0) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # the whole session (e.g. the dask worker under gridhub-worker)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


# ---------------------------------------------------------------------------
# Certificates


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def facility_cert(directory: Path) -> tuple[Path, Path]:
    """Self-signed certificate Traefik presents (stands in for ACME)."""
    return self_signed_cert(directory, ["gridhub-tunnel", "localhost", "127.0.0.1"])


@dataclass
class ClusterCreds:
    name: str
    cert: Path
    key: Path

    def security(self):
        from distributed.security import Security

        return Security(
            tls_ca_file=str(self.cert),
            tls_client_cert=str(self.cert),
            tls_client_key=str(self.key),
            require_encryption=True,
        )

    def worker_env(self) -> dict[str, str]:
        return {
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.cert),
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": str(self.cert),
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": str(self.key),
        }


def cluster_creds(directory: Path, name: str) -> ClusterCreds:
    cert, key = new_keypair(f"daskgateway-{name}")
    return ClusterCreds(
        name, _write(directory / f"{name}.crt", cert), _write(directory / f"{name}.pem", key)
    )


# ---------------------------------------------------------------------------
# Network namespaces ("grid worker nodes")


@dataclass
class Node:
    ns: str
    veth_host: str
    host_ip: str
    ns_ip: str
    site: Site | None = None

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def refuse_site_peers(self) -> None:
        """A node behind its own firewall: connections from the rest of its
        site are dropped silently (a direct attempt times out); its own
        outbound connections and their replies pass."""
        assert self.site is not None
        rules = f"""
table inet gridhub_node_fw {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip saddr {self.site.lan} ct state new drop
  }}
}}
"""
        subprocess.run(self.cmd("nft", "-f", "-"), input=rules.encode(), check=True)


@dataclass
class Site:
    """A grid site: a LAN behind a router namespace with one uplink."""

    name: str  # the DIRAC site name its jobs see (DIRACSITE)
    router: str  # the router's namespace
    uplink: str  # host side of the router's uplink veth
    lan: str  # the site network, e.g. 10.30.200.0/24
    gateway_ip: str  # the router's address on the LAN

    def uplink_bytes(self) -> int:
        """Bytes both ways on the uplink: every byte relayed for the site."""
        stats = Path("/sys/class/net") / self.uplink / "statistics"
        return sum(int((stats / f).read_text()) for f in ("rx_bytes", "tx_bytes"))


@dataclass
class Network:
    """Namespaces behind nftables: out to Traefik's Dask port only."""

    dask_port: int
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    nodes: list[Node] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    _subnet: int = field(default_factory=lambda: secrets.randbelow(200) + 20)

    @property
    def public_ip(self) -> str:
        """The facility's one "public" address, the same from every node (a
        dummy interface on the host; namespaces route only this /32)."""
        return f"10.{self._subnet}.255.1"

    @property
    def table(self) -> str:
        return f"gridhub_tunnel_test_{self.tag}"

    @property
    def prefix(self) -> str:
        return f"ght{self.tag}"

    def setup(self) -> None:
        p = self.prefix
        rules = f"""
table inet {self.table} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname "{p}h*" ct state established,related accept
    iifname "{p}h*" tcp dport {self.dask_port} accept
    iifname "{p}h*" drop
  }}
  chain output {{
    type filter hook output priority -10; policy accept;
    oifname "{p}h*" ct state established,related accept
    oifname "{p}h*" drop
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname "{p}h*" drop
    oifname "{p}h*" drop
  }}
}}
"""
        subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
        dummy = f"{p}d"
        for argv in (
            ["ip", "link", "add", dummy, "type", "bridge"],
            ["ip", "addr", "add", f"{self.public_ip}/32", "dev", dummy],
            ["ip", "link", "set", dummy, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)

    def add_site(self, name: str) -> Site:
        """A site: router namespace with a LAN bridge and an uplink to the
        host (routes: the site -> Traefik's address; the host -> the LAN)."""
        k = len(self.sites)
        if k >= 3:
            raise RuntimeError("too many test sites")
        p = self.prefix
        router, uplink = f"{p}r{k}", f"{p}hs{k}"  # {p}h*: the host's rules apply
        up = ipaddress.ip_network(f"10.{self._subnet}.{100 + k}.0/30")
        host_ip, router_ip = (str(a) for a in list(up.hosts())[:2])
        lan = f"10.{self._subnet}.{200 + k}.0/24"
        site = Site(name, router, uplink, lan, f"10.{self._subnet}.{200 + k}.1")
        self.sites.append(site)
        for argv in (
            ["ip", "netns", "add", router],
            ["ip", "link", "add", uplink, "type", "veth", "peer", "name", f"{p}u{k}"],
            ["ip", "link", "set", f"{p}u{k}", "netns", router],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", uplink],
            ["ip", "link", "set", uplink, "up"],
            ["ip", "-n", router, "addr", "add", f"{router_ip}/30", "dev", f"{p}u{k}"],
            ["ip", "-n", router, "link", "set", f"{p}u{k}", "up"],
            ["ip", "-n", router, "link", "set", "lo", "up"],
            ["ip", "-n", router, "link", "add", "lan", "type", "bridge"],
            ["ip", "-n", router, "addr", "add", f"{site.gateway_ip}/24", "dev", "lan"],
            ["ip", "-n", router, "link", "set", "lan", "up"],
            ["ip", "-n", router, "route", "add", f"{self.public_ip}/32", "via", host_ip],
            ["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "route", "add", lan, "via", router_ip],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        return site

    def add_node(self, site: Site | None = None) -> Node:
        i = len(self.nodes)
        if i >= 8:
            raise RuntimeError("too many test namespaces")
        if site is not None:
            return self._add_site_node(i, site)
        ns = f"{self.prefix}n{i}"
        vh, vn = f"{self.prefix}h{i}", f"{self.prefix}p{i}"
        net = ipaddress.ip_network(f"10.{self._subnet}.{i}.0/30")
        host_ip, ns_ip = (str(a) for a in list(net.hosts())[:2])
        node = Node(ns, vh, host_ip, ns_ip)
        self.nodes.append(node)
        for argv in (
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", vh, "type", "veth", "peer", "name", vn],
            ["ip", "link", "set", vn, "netns", ns],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", vh],
            ["ip", "link", "set", vh, "up"],
            ["ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", vn],
            ["ip", "-n", ns, "link", "set", vn, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "route", "add", f"{self.public_ip}/32", "via", host_ip],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        return node

    def _add_site_node(self, i: int, site: Site) -> Node:
        """A node whose one interface is on ``site``'s LAN."""
        ns, port = f"{self.prefix}n{i}", f"{self.prefix}l{i}"
        ns_ip = f"{site.gateway_ip.rsplit('.', 1)[0]}.{10 + i}"
        node = Node(ns, "", site.gateway_ip, ns_ip, site)
        self.nodes.append(node)
        for argv in (
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", port, "type", "veth", "peer", "name", f"{self.prefix}p{i}"],
            ["ip", "link", "set", f"{self.prefix}p{i}", "netns", ns],
            ["ip", "link", "set", port, "netns", site.router],
            ["ip", "-n", site.router, "link", "set", port, "master", "lan", "up"],
            ["ip", "-n", ns, "addr", "add", f"{ns_ip}/24", "dev", f"{self.prefix}p{i}"],
            ["ip", "-n", ns, "link", "set", f"{self.prefix}p{i}", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "route", "add", f"{self.public_ip}/32", "via", site.gateway_ip],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        return node

    def teardown(self) -> None:
        for node in self.nodes:
            r = subprocess.run(["ip", "netns", "pids", node.ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", node.ns], capture_output=True)
            if node.veth_host:
                subprocess.run(["ip", "link", "del", node.veth_host], capture_output=True)
        self.nodes.clear()
        for site in self.sites:
            subprocess.run(["ip", "route", "del", site.lan], capture_output=True)
            subprocess.run(["ip", "netns", "del", site.router], capture_output=True)
            subprocess.run(["ip", "link", "del", site.uplink], capture_output=True)
        self.sites.clear()
        subprocess.run(["ip", "link", "del", f"{self.prefix}d"], capture_output=True)
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)


# ---------------------------------------------------------------------------
# The facility


@dataclass
class Facility:
    dir: Path
    creds: dict[str, ClusterCreds]
    facility_crt: Path
    dask_port: int
    scheduler_port: int
    procs: list[Proc] = field(default_factory=list)
    scheduler: Proc | None = None
    tunnel: Proc | None = None
    traefik: Proc | None = None
    network: Network | None = None
    workers: list[Proc] = field(default_factory=list)

    @property
    def scheduler_address(self) -> str:
        """What a client at the facility dials: Traefik on loopback."""
        return f"gateway://127.0.0.1:{self.dask_port}/alpha"

    def client(self, cluster: str = "alpha", **kw):
        from distributed import Client

        return Client(
            f"gateway://127.0.0.1:{self.dask_port}/{cluster}",
            security=self.creds[cluster].security(),
            **kw,
        )

    def routes(self) -> dict:
        import httpx

        ready = json.loads((self.dir / "tunnel-ready.json").read_text())
        token = (self.dir / "token").read_text().strip()
        r = httpx.get(ready["config"], headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json()

    def start_worker(
        self,
        name: str,
        *,
        cluster: str = "alpha",
        key_of: str | None = None,
        reverse: bool = True,
        extra_worker_args: tuple[str, ...] = (),
        nthreads: int = 1,
        gridhub_args: tuple[str, ...] = (),
        client: str | None = None,
        host_key: str | None = None,
        site: Site | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """A gridhub-worker in its own namespace, as a DIRAC job runs it.

        ``client``: ``GRIDHUB_TUNNEL_CLIENT`` (None: the environment's);
        with ``openssh`` the tunnel server's host key is pinned
        (``host_key`` overrides it). ``site``: the node is on that site's
        LAN and the job sees its name as DIRACSITE. ``env``: more job
        environment."""
        assert self.network is not None
        node = self.network.add_node(site)
        creds = self.creds[cluster]
        keyc = self.creds[key_of or cluster]
        env = {
            **os.environ,
            **creds.worker_env(),
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": str(keyc.key),
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": str(keyc.cert),
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "10s",
            "GRIDHUB_CLUSTER_NAME": cluster,
            "GRIDHUB_FACILITY_DASK_ADDRESS": f"{self.network.public_ip}:{self.dask_port}",
            "GRIDHUB_FACILITY_CA": str(self.facility_crt),
            "GRIDHUB_WORKER_NAME": name,
            "GRIDHUB_REVERSE_PATH": "1" if reverse else "0",
            **({"DIRACSITE": site.name} if site else {}),
            **(env or {}),
        }
        if client is not None:
            env["GRIDHUB_TUNNEL_CLIENT"] = client
        if host_key or client == "openssh":
            env["GRIDHUB_TUNNEL_HOST_KEY"] = host_key or self.host_key()
        dask_args = [
            f"gateway://{self.network.public_ip}:{self.dask_port}/{cluster}",
            "--name",
            name,
            "--nthreads",
            str(nthreads),
            "--memory-limit",
            "0",
            "--no-dashboard",
        ]
        if not reverse:
            # Without the reverse path the worker can only advertise its
            # namespace-local address.
            dask_args += ["--host", node.ns_ip, "--no-nanny"]
        dask_args += list(extra_worker_args)
        cmd = node.cmd(str(VENV_BIN / "gridhub-worker"), *gridhub_args, "--", *dask_args)
        p = Proc(f"worker-{name}", cmd, self.dir / f"worker-{name}.log", env=env).start()
        p.node = node  # type: ignore[attr-defined]
        self.workers.append(p)
        self.procs.append(p)
        return p

    def host_key(self) -> str:
        """The tunnel server's SSH host key, OpenSSH public key line (what
        the gateway gives its jobs as GRIDHUB_TUNNEL_HOST_KEY)."""
        import asyncssh
        from gridhub.tunnel.server import HOST_KEY_NAME

        key = asyncssh.read_private_key(str(self.dir / "tunnel-state" / HOST_KEY_NAME))
        return key.export_public_key().decode().strip()

    def wait_tunnel_routes(self, n: int, timeout: float = 30) -> dict:
        def enough():
            cfg = self.routes()
            routers = cfg.get("tcp", {}).get("routers", {})
            tunnel = {k: v for k, v in routers.items() if k.startswith("tunnel-")}
            return tunnel if len(tunnel) >= n else None

        got = wait_for(enough, timeout, f"{n} tunnel routes")
        time.sleep(1.5)  # Traefik polls every second
        return got

    def log(self, proc: Proc | None) -> str:
        return proc.text() if proc else ""

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.network is not None:
            self.network.teardown()


def _traefik_static(d: Path, f: Facility, ping_port: int, config_url: str) -> Path:
    import yaml  # pyyaml is in the hub extra

    token = (d / "token").read_text().strip()
    dyn = d / "traefik-dynamic"
    dyn.mkdir(exist_ok=True)
    (dyn / "tls.yml").write_text(
        yaml.safe_dump(
            {
                "tls": {
                    "stores": {
                        "default": {
                            "defaultCertificate": {
                                "certFile": str(f.facility_crt),
                                "keyFile": str(d / "facility.key"),
                            }
                        }
                    }
                }
            }
        )
    )
    static = {
        "entryPoints": {
            # all local addresses: loopback (clients) and the veths (workers)
            "dask": {"address": f":{f.dask_port}"},
            "traefik": {"address": f"127.0.0.1:{ping_port}"},
        },
        "ping": {"entryPoint": "traefik"},
        "providers": {
            "http": {
                "endpoint": config_url,
                "pollInterval": "1s",
                "headers": {"Authorization": f"Bearer {token}"},
            },
            "file": {"directory": str(dyn), "watch": False},
        },
        "log": {"level": "INFO"},
        "accessLog": {"filePath": str(d / "traefik-access.log")},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    path = d / "traefik.yml"
    path.write_text(yaml.safe_dump(static))
    return path


def start_facility(
    d: Path, *, proxy_protocol: bool = True, extra_routes: dict[str, int] | None = None
) -> Facility:
    """The facility processes. ``extra_routes``: ``{name: port}`` -> SNI
    ``daskgateway-<name>`` passed through to ``127.0.0.1:port`` with alpha's
    key (bench: Traefik passthrough alone, no tunnel)."""
    d.mkdir(parents=True, exist_ok=True)
    creds = {c: cluster_creds(d, c) for c in CLUSTERS}
    crt, _ = facility_cert(d)
    _write(d / "token", secrets.token_hex(16).encode())
    f = Facility(d, creds, crt, dask_port=free_port(), scheduler_port=free_port())
    try:
        a = creds["alpha"]
        env = {
            **os.environ,
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(a.cert),
            "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": str(a.cert),
            "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": str(a.key),
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "10s",
        }
        sched = Proc(
            "scheduler",
            [
                str(VENV_BIN / "dask"),
                "scheduler",
                "--protocol",
                "tls",
                "--host",
                "127.0.0.1",
                "--port",
                str(f.scheduler_port),
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            d / "scheduler.log",
            env=env,
        ).start()
        f.procs.append(sched)
        f.scheduler = sched

        ready = d / "tunnel-ready.json"
        tcmd = [
            sys.executable,
            "-m",
            "gridhub.tunnel",
            "--state-dir",
            str(d / "tunnel-state"),
            "--listen",
            "127.0.0.1:0",
            "--config-listen",
            "127.0.0.1:0",
            "--token-file",
            str(d / "token"),
            "--ready-file",
            str(ready),
            "--keepalive",
            "5",
            "--cluster",
            f"alpha=tls://127.0.0.1:{f.scheduler_port},{a.cert}",
            # beta has a key but no scheduler here: enough for the refusals
            "--cluster",
            f"beta=tls://127.0.0.1:9,{creds['beta'].cert}",
        ]
        for name, port in (extra_routes or {}).items():
            tcmd += ["--cluster", f"{name}=tls://127.0.0.1:{port},{a.cert}"]
        if proxy_protocol:
            tcmd.append("--proxy-protocol")
        f.tunnel = Proc("tunnel", tcmd, d / "tunnel.log").start()
        f.procs.append(f.tunnel)
        info = wait_for(
            lambda: ready.exists() and json.loads(ready.read_text()), 20, "tunnel service"
        )

        ping = free_port()
        static = _traefik_static(d, f, ping, info["config"])
        f.traefik = Proc("traefik", [TRAEFIK, f"--configFile={static}"], d / "traefik.log").start()
        f.procs.append(f.traefik)

        import httpx

        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{ping}/ping").status_code == 200,
            20,
            "traefik ping",
        )
        wait_for(
            lambda: tls_probe(f.dask_port, "gridhub-tunnel", f.facility_crt),
            20,
            "traefik routes from the gateway provider",
        )
        wait_for(lambda: _port_open(f.scheduler_port), 30, "scheduler")
        return f
    except BaseException:
        f.stop()
        raise


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def tls_probe(port: int, sni: str, cafile: Path | None = None, timeout: float = 3) -> bool:
    """True if a TLS handshake with ``sni`` on Traefik's Dask port completes."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            with ctx.wrap_socket(s, server_hostname=sni):
                return True
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
            return False


def ssh_children(pid: int) -> list[int]:
    """The ``ssh`` processes gridhub-worker ``pid`` started (openssh client)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    found = []
    for k in kids:
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{k}/comm").read_text().strip() == "ssh":
                found.append(int(k))
    return found


def kill_tunnel(node_ns: str, pid: int) -> int:
    """Destroy the SSH connection(s) of gridhub-worker ``pid`` (or of its
    ``ssh`` child, the openssh client) inside its namespace (ss -K); the dask
    worker's own connections stay."""
    owners = {pid, *ssh_children(pid)}
    out = subprocess.run(
        ["ip", "netns", "exec", node_ns, "ss", "-tnpH", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    killed = 0
    for line in out.splitlines():
        if any(f"pid={p}," in line for p in owners):
            local = line.split()[2]
            subprocess.run(
                ["ip", "netns", "exec", node_ns, "ss", "-K", "src", local],
                capture_output=True,
                check=True,
            )
            killed += 1
    return killed


def start_networked_facility(d: Path, **kw) -> Facility:
    """start_facility, then its Network set up (the facility stopped if that fails)."""
    f = start_facility(d, **kw)
    f.network = Network(f.dask_port)
    try:
        f.network.setup()
    except BaseException:
        f.stop()
        raise
    return f


@pytest.fixture(name="facility")
def facility_fixture(tmp_path: Path) -> Iterator[Facility]:
    if not have_netns():
        pytest.skip("needs root, ip netns and nft")
    f = start_networked_facility(tmp_path / "facility")
    try:
        yield f
    finally:
        f.stop()
        if os.environ.get("GRIDHUB_TEST_SHOW_LOGS"):
            for p in f.procs:
                print(f"===== {p.name}\n{p.text()[-4000:]}")
