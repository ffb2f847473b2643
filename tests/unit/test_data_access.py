"""gridhub.data (fileset, token discovery, remote options) and gridhub.samples
(extraction from registry archives, fileset.json, idempotence) without the network."""

import io
import json
import os
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import uproot
from gridhub import data, samples


def test_data_dir_env_then_home_then_srv(tmp_path):
    assert data.data_dir({"GRIDHUB_DATA_DIR": str(tmp_path)}) == tmp_path
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    assert data.data_dir({"HOME": str(home)}) == Path("/srv/data")  # no fileset in ~/data
    (home / "data" / "fileset.json").write_text("{}")
    assert data.data_dir({"HOME": str(home)}) == home / "data"


def test_load_fileset_resolves_relative_keeps_remote_filters(tmp_path):
    (tmp_path / "fileset.json").write_text(
        json.dumps(
            {
                "ttbar": {
                    "files": {"a.root": "Events", "/abs/b.root": "Events", "c.root": "Events"},
                    "metadata": {"xsec": 729.84, "nevts": 200},
                },
                "wjets": {
                    "files": ["https://example.org/w.root", "root://eos.example//w2.root"],
                    "metadata": {},
                },
            }
        )
    )
    fs = data.load_fileset(tmp_path / "fileset.json")
    assert list(fs["ttbar"]["files"]) == [
        str(tmp_path / "a.root"),
        "/abs/b.root",
        str(tmp_path / "c.root"),
    ]
    assert fs["ttbar"]["metadata"]["xsec"] == 729.84
    assert fs["wjets"]["files"] == {
        "https://example.org/w.root": "Events",
        "root://eos.example//w2.root": "Events",
    }
    only = data.load_fileset(tmp_path / "fileset.json", processes=["ttbar"], max_files=1)
    assert list(only) == ["ttbar"] and len(only["ttbar"]["files"]) == 1
    with pytest.raises(KeyError, match="nope"):
        data.load_fileset(tmp_path / "fileset.json", processes=["nope"])
    # the default comes from data_dir()
    os.environ["GRIDHUB_DATA_DIR"] = str(tmp_path)
    try:
        assert data.load_fileset().keys() == fs.keys()
    finally:
        del os.environ["GRIDHUB_DATA_DIR"]


def test_bad_fileset_is_named(tmp_path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps({"ttbar": {"metadata": {}}}))
    with pytest.raises(ValueError, match="ttbar"):
        data.load_fileset(p)


def test_bearer_token_wlcg_discovery_order(tmp_path):
    tf = tmp_path / "tok"
    tf.write_text("  file-token\n")
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / f"bt_u{os.getuid()}").write_text("xdg-token")
    assert (
        data.bearer_token({"BEARER_TOKEN": "env-token", "BEARER_TOKEN_FILE": str(tf)})
        == "env-token"
    )
    assert (
        data.bearer_token({"BEARER_TOKEN_FILE": str(tf), "XDG_RUNTIME_DIR": str(xdg)})
        == "file-token"
    )
    assert data.bearer_token({"XDG_RUNTIME_DIR": str(xdg)}) == "xdg-token"
    if data.token_file({}) is None:  # no token at the default WLCG path here
        assert data.bearer_token({"BEARER_TOKEN_FILE": str(tmp_path / "missing")}) is None
    # read fresh each call: the hub rotates the file
    tf.write_text("rotated")
    assert data.bearer_token({"BEARER_TOKEN_FILE": str(tf)}) == "rotated"


def test_storage_options_per_scheme(tmp_path):
    tf = tmp_path / "tok"
    tf.write_text("abc")
    env = {"BEARER_TOKEN_FILE": str(tf)}
    assert data.storage_options("https://x.org/f.root", env) == {
        "headers": {"Authorization": "Bearer abc"}
    }
    assert (
        data.storage_options("davs://x.org/f.root", env)["headers"]["Authorization"] == "Bearer abc"
    )
    assert data.storage_options("root://x.org//f.root", env) == {}  # XRootD reads the file itself
    assert data.storage_options("/local/f.root", env) == {}
    assert data.storage_options("https://x.org/f.root", {"BEARER_TOKEN_FILE": "/nonexistent"}) in (
        {},
        {"headers": {"Authorization": f"Bearer {data.bearer_token({})}"}},
    )


def test_reachable_is_quick_and_honest(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        assert data.reachable(f"https://127.0.0.1:{port}/f.root", timeout=1)
    finally:
        srv.close()
    assert not data.reachable(f"root://127.0.0.1:{port}//f.root", timeout=1)
    assert data.reachable(str(tmp_path))
    assert not data.reachable(str(tmp_path / "nope.root"))
    assert not data.reachable("ftp://example.org/x")


def _events_file(path: Path, n: int = 5) -> None:
    with uproot.recreate(path) as f:
        f["Events"] = {"x": np.arange(n, dtype=np.float32)}


def test_open_sends_the_bearer_token_over_https(tmp_path, monkeypatch):
    """uproot over http with the Authorization header our helper adds."""
    import http.server

    root_file = tmp_path / "f.root"
    _events_file(root_file, 7)
    body = root_file.read_bytes()
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def _send(self, head_only):
            seen.append(self.headers.get("Authorization"))
            rng = self.headers.get("Range")
            if rng:
                start, end = (int(v) for v in rng.split("=")[1].split("-"))
                chunk = body[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            else:
                chunk = body
                self.send_response(200)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not head_only:
                self.wfile.write(chunk)

        def do_GET(self):
            self._send(False)

        def do_HEAD(self):
            self._send(True)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tf = tmp_path / "tok"
    tf.write_text("sekrit")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tf))
    monkeypatch.delenv("BEARER_TOKEN", raising=False)
    try:
        with data.open(f"http://127.0.0.1:{server.server_address[1]}/f.root") as f:
            assert f["Events"]["x"].array(library="np").tolist() == list(range(7))
    finally:
        server.shutdown()
    assert seen and set(seen) == {"Bearer sekrit"}


def _fake_archives(tmp: Path) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    sdist = tmp / "coffea-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in (*samples.COFFEA_FILES, "other.root"):
            p = tmp / name
            _events_file(p, 200 if "tt" in name else 40)
            tar.add(p, f"coffea-1.0/tests/samples/{name}")
        info = tarfile.TarInfo("coffea-1.0/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    wheel = tmp / "scikit_hep_testdata-0.3.12-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in (*samples.SKHEP_FILES, "uproot-HZZ-lz4.root"):
            z.writestr(f"skhep_testdata/data/{name}", b"root-bytes")
    return sdist, wheel


def test_fetch_extracts_root_files_writes_fileset_and_is_idempotent(tmp_path, monkeypatch):
    sdist, wheel = _fake_archives(tmp_path / "archives")
    calls = []

    def fake_download(requirement, dest, *, sdist, python=None):
        calls.append(requirement)
        src = sdist_path if sdist else wheel
        target = dest / src.name
        target.write_bytes(src.read_bytes())
        return target

    sdist_path = sdist
    monkeypatch.setattr(samples, "pip_download", fake_download)
    dest = tmp_path / "data"
    samples.fetch(dest, coffea="1.0")
    assert calls == ["coffea==1.0", "scikit-hep-testdata==0.3.12"]
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted([*samples.COFFEA_FILES, *samples.SKHEP_FILES, "fileset.json"])
    fs = data.load_fileset(dest / "fileset.json")
    assert fs["ttbar"]["files"] == {str(dest / "nano_tt_v12.root"): "Events"}
    assert fs["ttbar"]["metadata"]["nevts"] == 200
    assert fs["dy"]["metadata"]["nevts"] == 40
    # second run: nothing downloaded
    samples.fetch(dest, coffea="1.0")
    assert len(calls) == 2
    # a lost file is fetched again, the others stay
    (dest / "uproot-HZZ.root").unlink()
    samples.fetch(dest, coffea="1.0")
    assert calls[2:] == ["scikit-hep-testdata==0.3.12"]


def test_fetch_names_what_the_archive_lacks(tmp_path, monkeypatch):
    empty = tmp_path / "coffea-1.0.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    monkeypatch.setattr(samples, "pip_download", lambda *a, **k: empty)
    with pytest.raises(RuntimeError, match=r"nano_tt_v12\.root"):
        samples.fetch(tmp_path / "d", coffea="1.0")


def test_pip_download_command(tmp_path, monkeypatch):
    seen = {}

    def run(cmd, check):
        seen["cmd"] = cmd
        (tmp_path / "coffea-9.9.tar.gz").write_bytes(b"")

    monkeypatch.setattr(samples.subprocess, "run", run)
    out = samples.pip_download("coffea==9.9", tmp_path, sdist=True)
    assert out.name == "coffea-9.9.tar.gz"
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[cmd.index("--no-binary") + 1] == "coffea"
    assert cmd[-1] == "coffea==9.9"


def test_pick_reason_is_the_storage_answer():
    """pick's description carries the first line of the refusal, shortened."""
    exc = OSError("Failed to open file: [ERROR] [3010] Unable to open /x; permission denied\nmore")
    assert data._reason(exc) == (
        "OSError: Failed to open file: [ERROR] [3010] Unable to open /x; permission denied"
    )
    assert data._reason(TimeoutError()) == "TimeoutError"
    long = data._reason(ValueError("x" * 500))
    assert len(long) == len("ValueError: ") + 200 and long.endswith("...")
