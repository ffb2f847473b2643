"""The token service and the token-file refresher against a fake hub API (one process)."""

from __future__ import annotations

import socket
import stat

from gridhub.hub.tokenfile import TokenFileRefresher, write_token_file
from gridhub.hub.tokenservice import make_app
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

SERVICE_TOKEN = "service-token"  # noqa: S105
USERS = {
    "alice-server-token": "alice",
    "bob-server-token": "bob",
    "alice-scopeless-token": "alice",
    "alice-admin-token": "alice",
}
# what JupyterHub's /hub/api/user lists for each token (expanded scopes)
SCOPES = {
    "alice-server-token": ["access:servers!server=alice/", "custom:gridhub-tokens:read!user=alice"],
    "bob-server-token": ["custom:gridhub-tokens:read!user=bob"],
    "alice-scopeless-token": [],
    # a filtered scope for another user does not do
    "alice-admin-token": ["admin:users", "custom:gridhub-tokens:read!user=bob"],
}
STATE = {"alice": {"access_token": "alice-at-1", "expires_at": 1.0}, "bob": {}}


class FakeUser(web.RequestHandler):
    def get(self):
        token = self.request.headers["Authorization"].split()[1]
        if token not in USERS:
            raise web.HTTPError(403)
        self.finish({"kind": "user", "name": USERS[token], "scopes": SCOPES[token]})


class FakeUsers(web.RequestHandler):
    def get(self, name):
        assert self.request.headers["Authorization"] == f"token {SERVICE_TOKEN}"
        self.finish({"name": name, "auth_state": STATE[name]})


def listen(app) -> tuple[HTTPServer, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = HTTPServer(app)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


async def test_token_service_and_refresher(tmp_path):
    hub, hub_port = listen(
        web.Application([(r"/hub/api/user", FakeUser), (r"/hub/api/users/(.+)", FakeUsers)])
    )
    svc_app = make_app(
        "/services/gridhub-tokens/", f"http://127.0.0.1:{hub_port}/hub/api", SERVICE_TOKEN
    )
    svc, svc_port = listen(svc_app)
    url = f"http://127.0.0.1:{svc_port}/services/gridhub-tokens/"
    try:
        path = tmp_path / "private" / "bearer_token"
        alice = TokenFileRefresher(str(path), url, "alice-server-token", interval=60)
        assert await alice.refresh_once()
        assert path.read_text() == "alice-at-1\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        STATE["alice"] = {"access_token": "alice-at-2", "expires_at": 2.0}
        assert await alice.refresh_once()
        assert path.read_text() == "alice-at-2\n"
        # bob has no IAM token; a stranger gets nothing
        bob = TokenFileRefresher(str(tmp_path / "bob"), url, "bob-server-token", interval=1)
        assert not await bob.refresh_once()
        eve = TokenFileRefresher(str(tmp_path / "eve"), url, "forged", interval=1)
        assert not await eve.refresh_once()
        assert not (tmp_path / "bob").exists() and not (tmp_path / "eve").exists()
        # alice's tokens without the scope (for alice) get nothing
        for other in ("alice-scopeless-token", "alice-admin-token"):
            r = await AsyncHTTPClient().fetch(
                url + "token", headers={"Authorization": f"token {other}"}, raise_error=False
            )
            assert r.code == 403, (other, r.code)
            assert b"alice-at" not in (r.body or b"")
    finally:
        hub.stop()
        svc.stop()


def test_write_token_file_replaces_atomically(tmp_path):
    target = tmp_path / "t"
    write_token_file(target, "one")
    inode = target.stat().st_ino
    write_token_file(target, "two")
    assert target.read_text() == "two\n" and target.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
