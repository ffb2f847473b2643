"""Masterclass mode, end to end over HTTP through Traefik: a real hub and real servers."""

from __future__ import annotations

import ast
import json
import pwd
import stat
import time
from pathlib import Path

import httpx

try:
    from .hub_fixtures import *  # noqa: F403
    from .hub_fixtures import TEST_UNIX_USER, Hub, execute, login_form
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from hub_fixtures import TEST_UNIX_USER, Hub, execute, login_form

from processes import wait_for

CODE = "open-sesame-2026"
TEACHER_CODE = "teacher-" + "x" * 40
FACILITY = "Masterclass Test Facility"
NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Welcome"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def masterclass_hub(hub_factory, name: str, **env: str) -> Hub:
    hub = hub_factory(name=name)
    notebooks = hub.workdir / "notebooks"
    (notebooks / "data").mkdir(parents=True)
    (notebooks / "01-welcome.ipynb").write_text(json.dumps(NOTEBOOK))
    (notebooks / "data" / "events.csv").write_text("run,event\n1,2\n")
    hub.env.update(
        {
            "GRIDHUB_FACILITY_NAME": FACILITY,
            "GRIDHUB_MASTERCLASS_ACCESS_CODE": CODE,
            "GRIDHUB_MASTERCLASS_TEACHER_CODE": TEACHER_CODE,
            "GRIDHUB_MASTERCLASS_TEACHERS": "teacher",
            "GRIDHUB_MASTERCLASS_NOTEBOOKS_DIR": str(notebooks),
            "GRIDHUB_CULL_IDLE_TIMEOUT": "0",
            **env,
        }
    )
    return hub.start(timeout=180)  # a bound, not a measure: the shared host may be loaded


def browser(hub: Hub) -> httpx.Client:
    return httpx.Client(base_url=hub.public_url, timeout=30, follow_redirects=True)


def start_server(hub: Hub, client: httpx.Client, name: str) -> None:
    r = client.get("/hub/spawn")
    assert r.status_code == 200, r.text[-500:]
    hub.wait_server_ready(name)
    lab = client.get(f"/user/{name}/lab")
    assert lab.status_code == 200, (lab.url, lab.text[-500:])
    assert str(lab.url).startswith(f"{hub.public_url}/user/{name}/lab")


def run_cell(hub: Hub, name: str, token: str, code: str, timeout: float = 90) -> str:
    """Start a kernel in the user's server (REST) and run ``code`` over the kernel
    websocket, as JupyterLab does; return the text/plain result."""
    auth = {"Authorization": f"token {token}"}
    base = f"{hub.public_url}/user/{name}/api"
    r = httpx.post(f"{base}/kernels", json={"name": "python3"}, headers=auth, timeout=60)
    r.raise_for_status()
    kernel = r.json()["id"]
    try:
        ws_url = f"{base.replace('http', 'ws', 1)}/kernels/{kernel}/channels"
        return execute(ws_url, token, name, code, timeout)
    finally:
        httpx.delete(f"{base}/kernels/{kernel}", headers=auth, timeout=30)


# the kernel's own connection: on a unix socket in the short runtime dir
KERNEL_TRANSPORT = (
    "import json; from ipykernel.connect import get_connection_file; "
    "c = json.load(open(get_connection_file())); (c['transport'], c['ip'])"
)


def user_token(hub: Hub, name: str) -> str:
    with hub.admin() as admin:
        r = admin.post(f"/users/{name}/tokens", json={"note": "test", "expires_in": 600})
        r.raise_for_status()
        return r.json()["token"]


def test_masterclass_students(hub_factory):
    t0 = time.monotonic()
    hub = masterclass_hub(hub_factory, "masterclass")
    print(f"hub up in {time.monotonic() - t0:.1f}s")

    with browser(hub) as eve:
        page = eve.get("/hub/login")
        assert FACILITY in page.text and "Access code" in page.text
        refused = login_form(eve, "eve", "not-the-code")
        assert refused.status_code == 403
        assert "jupyterhub-session-id" not in eve.cookies or not eve.get("/hub/api/user").is_success
        # a student cannot claim a teacher's name with the student code
        assert login_form(eve, "teacher", CODE).status_code == 403

    alice, bob = browser(hub), browser(hub)
    try:
        for client, name in ((alice, "alice"), (bob, "bob")):
            r = login_form(client, name, CODE)
            assert r.status_code == 302, r.text[-500:]
            t1 = time.monotonic()
            start_server(hub, client, name)
            print(f"{name}: login to JupyterLab in {time.monotonic() - t1:.1f}s")
            listing = client.get(f"/user/{name}/api/contents").json()
            names = {item["name"] for item in listing["content"]}
            assert {"01-welcome.ipynb", "data"} <= names, names
            assert (hub.home(name) / "data" / "events.csv").read_text().startswith("run,")
            assert not hub.user_model(name)["admin"]

        # A cannot reach B's server or B's API, by cookie or by token
        assert alice.get("/user/bob/lab").status_code == 403
        a_token = user_token(hub, "alice")
        auth = {"Authorization": f"token {a_token}"}
        assert httpx.get(f"{hub.public_url}/user/bob/api/contents", headers=auth).status_code == 403
        assert httpx.get(f"{hub.public_url}/user/alice/api/contents", headers=auth).is_success

        # her kernel runs a cell, over unix sockets in her private runtime dir
        transport, ip = ast.literal_eval(run_cell(hub, "alice", a_token, KERNEL_TRANSPORT))
        runtime = Path("/tmp/gridhub-runtime/alice")  # noqa: S108
        assert transport == "ipc" and Path(ip).parent == runtime, (transport, ip)
        assert stat.S_IMODE(runtime.stat().st_mode) & 0o777 == 0o700  # (+ jupyter sticky bit)
        assert runtime.stat().st_uid == pwd.getpwnam(TEST_UNIX_USER).pw_uid
        assert httpx.get(f"{hub.api}/users/bob", headers=auth).status_code in (403, 404)
        assert httpx.post(f"{hub.api}/users/bob/server", headers=auth).status_code in (403, 404)

        # alice edits the notebook; restarting her server never overwrites it
        edited = dict(NOTEBOOK, cells=[{"cell_type": "markdown", "metadata": {}, "source": "mine"}])
        r = httpx.put(
            f"{hub.public_url}/user/alice/api/contents/01-welcome.ipynb",
            headers=auth,
            json={"type": "notebook", "format": "json", "content": edited},
        )
        assert r.is_success, r.text
        (hub.home("alice") / "data" / "events.csv").unlink()  # deleted stays deleted
        with hub.admin() as admin:
            admin.delete("/users/alice/server").raise_for_status()
            wait_for(lambda: not hub.user_model("alice")["servers"], 60, what="alice stopped")
            admin.post("/users/alice/server").raise_for_status()
        hub.wait_server_ready("alice")
        nb = json.loads((hub.home("alice") / "01-welcome.ipynb").read_text())
        assert "".join(nb["cells"][0]["source"]) == "mine"
        assert not (hub.home("alice") / "data" / "events.csv").exists()
    finally:
        alice.close()
        bob.close()

    # the teacher logs in with the teacher code and is an admin
    with browser(hub) as teacher:
        assert login_form(teacher, "teacher", TEACHER_CODE).status_code == 302
        assert hub.user_model("teacher")["admin"] is True

    # /hub/metrics: not for anonymous users, yes for the metrics token
    assert httpx.get(f"{hub.public_url}/hub/metrics").status_code == 403
    token = (hub.state / "secrets" / "metrics_token").read_text().strip()
    r = httpx.get(f"{hub.public_url}/hub/metrics", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200 and "jupyterhub_" in r.text


def test_idle_server_is_culled(hub_factory):
    hub = masterclass_hub(
        hub_factory, "culler", GRIDHUB_CULL_IDLE_TIMEOUT="15", GRIDHUB_CULL_EVERY="5"
    )
    with browser(hub) as carol:
        assert login_form(carol, "carol", CODE).status_code == 302
        assert carol.get("/hub/spawn").status_code == 200
        hub.wait_server_ready("carol")
        t0 = time.monotonic()
        wait_for(lambda: not hub.user_model("carol")["servers"], 120, interval=2, what="cull")
        print(f"culled {time.monotonic() - t0:.1f}s after ready")
    assert "Culling server" in hub.log() or "culling" in hub.log().lower()


def test_secrets_private_and_stable_across_restarts(hub_factory):
    hub = masterclass_hub(hub_factory, "secrets")
    secrets_dir = hub.state / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(hub.state.stat().st_mode) == 0o700
    before = {}
    for f in sorted(secrets_dir.iterdir()):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        before[f.name] = f.read_text()
    for name in ("cookie_secret", "crypt_key", "proxy_api_password", "gateway_api_token"):
        assert len(bytes.fromhex(before[name].strip())) == 32
    with browser(hub) as dave:
        assert login_form(dave, "dave", CODE).status_code == 302
        hub.stop()
        hub.start()
        after = {f.name: f.read_text() for f in sorted(secrets_dir.iterdir())}
        assert after == before
        # same cookie secret: the session survives the restart
        home = dave.get("/hub/home")
        assert home.status_code == 200 and "/hub/home" in str(home.url)


# --- issue 15 point 5: names, class size, failed logins (each first seen failing) ---


def test_a_second_login_under_a_name_does_not_get_that_students_server(hub_factory):
    hub = masterclass_hub(hub_factory, "mc-names")
    alice = browser(hub)
    try:
        assert login_form(alice, "alice", CODE).status_code == 302
        start_server(hub, alice, "alice")
        started = hub.user_model("alice")["servers"][""]["started"]

        # someone else types her name with the right code: refused, never in her server
        with browser(hub) as mallory:
            r = login_form(mallory, "alice", CODE)
            assert r.status_code == 403, (r.status_code, r.headers.get("location"))
            assert "already taken" in r.text
            lab = mallory.get("/user/alice/lab")
            assert lab.status_code != 200 or "/hub/login" in str(lab.url), lab.url
            assert "jupyter-config-data" not in lab.text
            assert not mallory.get("/hub/api/user").is_success

        # alice comes back (logged out, the same browser): her running server
        alice.get("/hub/logout")
        assert not alice.get("/hub/api/user").is_success
        assert login_form(alice, "alice", CODE).status_code == 302
        lab = alice.get("/hub/")
        assert str(lab.url).startswith(f"{hub.public_url}/user/alice/lab"), lab.url
        assert lab.status_code == 200 and "jupyter-config-data" in lab.text
        assert hub.user_model("alice")["servers"][""]["started"] == started
    finally:
        alice.close()
    # what the hub keeps: the name's hub user and a hash of its key, 0600
    students = hub.state / "masterclass-seats.json"
    assert stat.S_IMODE(students.stat().st_mode) == 0o600
    entry = json.loads(students.read_text())["alice"]
    assert entry["user"] == "alice" and len(entry["key"]) == 64


def test_the_class_size_refuses_the_next_student(hub_factory):
    hub = masterclass_hub(hub_factory, "mc-size", GRIDHUB_MASTERCLASS_CLASS_SIZE="2")
    clients = {name: browser(hub) for name in ("alice", "bob", "carol")}
    try:
        for name in ("alice", "bob"):
            assert login_form(clients[name], name, CODE).status_code == 302
        r = login_form(clients["carol"], "carol", CODE)
        assert r.status_code == 403, r.status_code
        assert "This class is full: 2 students have joined" in r.text
        with hub.admin() as admin:
            assert "carol" not in {u["name"] for u in admin.get("/users").json()}
        # who joined comes back; the teacher is no student
        clients["bob"].get("/hub/logout")
        assert login_form(clients["bob"], "bob", CODE).status_code == 302
        with browser(hub) as teacher:
            assert login_form(teacher, "teacher", TEACHER_CODE).status_code == 302
    finally:
        for c in clients.values():
            c.close()


def test_login_attempts_past_the_failure_limit_are_refused(hub_factory):
    hub = masterclass_hub(
        hub_factory,
        "mc-failures",
        GRIDHUB_MASTERCLASS_FAILED_LOGIN_LIMIT="3",
        GRIDHUB_MASTERCLASS_FAILED_LOGIN_WINDOW="600",
    )
    with browser(hub) as alice:
        assert login_form(alice, "alice", CODE).status_code == 302  # before: fine
        alice.get("/hub/logout")
        with browser(hub) as eve:
            for guess in ("guess-0001", "guess-0002", "guess-0003"):
                assert login_form(eve, "eve", guess).status_code == 403
            # past the limit: refused, the right code too, and for everyone at the address
            r = login_form(eve, "eve", CODE)
            assert r.status_code == 429, r.status_code
            assert "Too many failed logins" in r.text
        r = login_form(alice, "alice", CODE)
        assert r.status_code == 429
        with hub.admin() as admin:
            assert "eve" not in {u["name"] for u in admin.get("/users").json()}
