"""gridhub.lake_metrics: XRootD's summary records as Prometheus metrics, for the
facility's metrics token only (checked against its hash). The record is real:
Debian's xrootd 5.5.3 as an XCache (pss + pfc) after one 3 MB read, from
`xrdfs ... query stats a`: the XML `xrd.report` sends over UDP (with XRootD's
stray '>' in `<hits>0></hits>`)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from gridhub.lake_metrics import parse, serve, verifier
from gridhub.ports import free_port

RECORD = (Path(__file__).parent / "data" / "xrootd-5.5.3-xcache-summary.xml").read_bytes()


def test_every_number_of_the_record_by_its_path():
    ident, values = parse(RECORD)
    assert ident == {"pgm": "xrootd", "ver": "v5.5.3", "ins": "cache"}
    assert values["xrootd_link_out"] == 3152703  # exact: bytes
    assert values["xrootd_xrootd_ops_rd"] == 1
    assert values["xrootd_xrootd_lgn_num"] == 3
    # mixed content (<open>1<errs>0</errs></open>) and the stray '>'
    assert values["xrootd_pss_open"] == 1 and values["xrootd_pss_open_errs"] == 0
    assert values["xrootd_cache_rd_hits"] == 0
    assert values["xrootd_cache_store_size"] == 270553174016
    # identity, bookkeeping and the host's disks are not metrics
    assert not [k for k in values if k.startswith(("xrootd_info", "xrootd_sgen", "xrootd_oss"))]


def test_what_is_not_a_summary_record_is_refused():
    with pytest.raises(ValueError, match="not an XRootD summary record"):
        parse(b"<html><body>hello</body></html>")


def test_served_to_the_token_only(tmp_path):
    verifier_file = tmp_path / "metrics_token.sha256"
    http, udp = free_port(), free_port(kind=socket.SOCK_DGRAM)
    server = serve(f"127.0.0.1:{http}", f"127.0.0.1:{udp}", verifier_file, interval=15)
    url = f"http://127.0.0.1:{http}"
    try:
        # the hub has not written the hash yet: nothing is served, to anyone
        r = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 503 and "metrics_token" in r.text
        verifier_file.write_text(verifier("s3cret") + "\n")
        assert "s3cret" not in verifier_file.read_text()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"<not xml", ("127.0.0.1", udp))
            s.sendto(RECORD, ("127.0.0.1", udp))
        wrong = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"})
        for headers in (*wrong, {"Authorization": f"Bearer {verifier('s3cret')}"}):
            r = httpx.get(f"{url}/metrics", headers=headers)
            assert r.status_code == 401 and "xrootd_link" not in r.text, headers
        deadline = time.monotonic() + 10
        while "xrootd_link_out" not in (text := _scrape(url)):
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        lines = text.splitlines()
        assert "xrootd_link_out 3152703" in lines
        assert "xrootd_up 1" in lines
        assert "xrootd_summary_bad_total 1" in lines
        assert 'xrootd_info{ins="cache",pgm="xrootd",ver="v5.5.3"} 1' in lines
        assert httpx.get(f"{url}/healthz").text == "ok\n"
    finally:
        server.shutdown()
        server.server_close()


def _scrape(url: str) -> str:
    r = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200, r.text
    return r.text
