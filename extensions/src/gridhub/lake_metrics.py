"""The data lake's XRootD servers as Prometheus metrics (docs/monitoring.md).

XRootD has no Prometheus endpoint; it sends a summary record (XML, its
"summary monitoring": links, bytes in and out, requests by kind, logins,
errors, and for an XCache the proxy file cache's reads, hits and store) over
UDP every ``xrd.report`` interval. This process runs beside ``xrootd`` in the
lake's container (images/xrootd/gridhub-lake), takes those records on
loopback and serves the latest one's numbers as ``xrootd_<stats id>_<path>``
at ``/metrics``, to callers presenting the facility's metrics token only:
the XCache is also on the users' and grid networks, where user code runs.
It holds the token's SHA-256 (``verifier``, written by the hub's
gridhub-init), never the token.

Standard library only (the lake image has Debian's python3, not GridHub's
environment): the image carries this module and promtext.

    python3 -m gridhub.lake_metrics --listen 0.0.0.0:9101 --report 127.0.0.1:9931 \\
        --token-sha256 /srv/gridhub/lake/metrics_token.sha256
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .promtext import CONTENT_TYPE, Metric, exposition

# records of no use as numbers: identity (info), the record's own bookkeeping
# (sgen) and per-path disk figures (oss: nested records, the host's disks)
SKIP = {"info", "sgen", "oss"}
# XRootD 5.5 writes some values with a stray character ("<hits>0></hits>")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(text: str | None) -> float | None:
    match = NUMBER.match((text or "").strip())
    return float(match.group()) if match else None


def _walk(elem: ET.Element, name: str, out: dict[str, float]) -> None:
    value = _number(elem.text)
    if value is not None:
        out[name] = value
    for child in elem:
        _walk(child, f"{name}_{child.tag}", out)


def parse(record: bytes) -> tuple[dict[str, str], dict[str, float]]:
    """One summary record: its identity (program, version, instance) and every
    number in it by flattened name (``xrootd_link_out``, ``xrootd_cache_rd_hits``)."""
    # from xrootd in the same container, over loopback only (receive's socket);
    # Debian 12's expat 2.5 bounds entity expansion
    root = ET.fromstring(record)  # noqa: S314
    if root.tag != "statistics":
        raise ValueError(f"not an XRootD summary record: <{root.tag}>")
    ident = {k: root.get(k, "") for k in ("pgm", "ver", "ins")}
    values: dict[str, float] = {}
    for stats in root.findall("stats"):
        kind = stats.get("id", "")
        if kind in SKIP or not kind.isidentifier():
            continue
        for child in stats:
            _walk(child, f"xrootd_{kind}_{child.tag}", values)
    return ident, values


def verifier(token: str) -> str:
    """What the exporter checks a presented token against: its SHA-256 (hex).
    The token is 256 random bits, so a fast hash gives nothing to search, and
    the lake's image needs nothing beyond Python's standard library."""
    return hashlib.sha256(token.encode()).hexdigest()


class Summary:
    """The latest record, as the UDP thread saw it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._record: tuple[dict[str, str], dict[str, float]] | None = None
        self._when = 0.0
        self.bad = 0

    def take(self, data: bytes) -> None:
        try:
            parsed = parse(data)
        except (ET.ParseError, ValueError):
            with self._lock:
                self.bad += 1
            return
        with self._lock:
            self._record, self._when = parsed, time.monotonic()

    def metrics(self) -> list[Metric]:
        with self._lock:
            record, when, bad = self._record, self._when, self.bad
        age = time.monotonic() - when if record else float("inf")
        # up: a record within three intervals (xrootd reports on its own clock)
        up = float(age < 3 * self.interval)
        out: list[Metric] = [
            ("xrootd_up", "gauge", "1 if xrootd sent a summary lately", {(): up}),
            ("xrootd_summary_bad_total", "counter", "records that did not parse", {(): bad}),
        ]
        if record:
            ident, values = record
            labels = tuple(sorted(ident.items()))
            out.append(("xrootd_info", "gauge", "the reporting server", {labels: 1.0}))
            out.append(("xrootd_summary_age_seconds", "gauge", "the latest one's age", {(): age}))
            for name, value in sorted(values.items()):
                out.append((name, "untyped", "XRootD summary monitoring", {(): value}))
        return out


def receive(sock: socket.socket, summary: Summary) -> None:
    while True:
        data, _ = sock.recvfrom(65536)
        summary.take(data)


class Handler(BaseHTTPRequestHandler):
    summary: Summary
    verifier: Path

    def do_GET(self) -> None:
        if self.path == "/healthz":  # the container's check: says nothing else
            return self._send(200, "ok\n", "text/plain")
        if self.path != "/metrics":
            return self._send(404, "not found\n", "text/plain")
        try:  # read each time: the hub writes it at its start, maybe after this one's
            expected = self.verifier.read_text().strip()
        except OSError:
            expected = ""
        if not expected:  # never serve without it
            return self._send(503, f"no metrics token hash at {self.verifier} yet\n", "text/plain")
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        digest = verifier(given.strip())
        if scheme != "Bearer" or not given.strip() or not hmac.compare_digest(digest, expected):
            return self._send(401, "the facility's metrics token is needed\n", "text/plain")
        self._send(200, exposition(self.summary.metrics()), CONTENT_TYPE)

    def _send(self, code: int, body: str, kind: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # no line per scrape
        pass


def _address(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"lake_metrics: {flag} wants host:port, not {text!r}")
    return host or "0.0.0.0", int(port)  # noqa: S104 (the container's own interfaces)


def serve(listen: str, report: str, verifier: Path, interval: float) -> ThreadingHTTPServer:
    """Start the UDP receiver and the HTTP server (in threads); return the server."""
    summary = Summary(interval)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(_address(report, "--report"))
    threading.Thread(target=receive, args=(udp, summary), daemon=True).start()
    handler = type("LakeMetrics", (Handler,), {"summary": summary, "verifier": verifier})
    server = ThreadingHTTPServer(_address(listen, "--listen"), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python3 -m gridhub.lake_metrics", description=__doc__)
    ap.add_argument("--listen", default="0.0.0.0:9101", help="where Prometheus scrapes")
    ap.add_argument("--report", default="127.0.0.1:9931", help="where xrootd sends (xrd.report)")
    ap.add_argument(
        "--token-sha256", type=Path, required=True, help="file: the metrics token's SHA-256 (hex)"
    )
    ap.add_argument("--interval", type=float, default=15, help="xrd.report's 'every' (seconds)")
    args = ap.parse_args(argv)
    serve(args.listen, args.report, args.token_sha256, args.interval)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
