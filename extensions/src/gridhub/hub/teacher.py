"""The teacher's view of a masterclass: a hub-managed JupyterHub service.

    /services/teacher/             the class: students by the names they typed, their
                                   server (running, starting, stopped, error), kernels
                                   (idle, busy, starting, dead...) and last activity
    /services/teacher/api/class    the same as JSON
    POST .../api/students/<name>/reset     {"path"}  the student's copy of a class
                                   notebook back to the class version
    POST .../api/push              {"path"[, "content"]}  a notebook to every student
                                   (the content given, else the teacher's own copy in
                                   their server); it becomes the class version
    POST .../api/students/<name>/kernels/<id>/stop   shut a runaway kernel down
    POST .../api/students/<name>/release   the student may log in again from another
                                   browser (gridhub.hub.students: the next login under the
                                   name gets a new cookie and the same server)

Who may use it: JupyterHub's own rule for services, the scope
``access:services!service=teacher``, which admins hold (teachers log in with the teacher
code and are admins) and students do not: they get 403. The service's own token may list
users, read servers and the proxy's routes (where each server listens) and use the
servers' API (``access:servers``): it talks to each student's Jupyter server directly,
as the hub does. Before it overwrites a student's notebook it saves a checkpoint
(JupyterLab: File > Revert Notebook to Checkpoint gives the student's work back).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

import httpx
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from .service import serve
from .students import locked_students, read_students

log = logging.getLogger("gridhub.teacher")


class Class:
    """What the view knows and does: the students file, the hub API, the servers."""

    def __init__(self, students_file: str, notebooks_dir: str, versions_dir: str):
        self.students_file = students_file
        self.notebooks_dir = Path(notebooks_dir)
        self.versions_dir = Path(versions_dir)  # notebooks pushed by a teacher
        self.hub = httpx.AsyncClient(
            base_url=os.environ["JUPYTERHUB_API_URL"],
            headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
            timeout=30,
        )
        # the servers, directly (the same token: access:servers)
        self.servers = httpx.AsyncClient(
            headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
            timeout=30,
        )

    async def _targets(self) -> dict[str, str]:
        """{hub user: base URL of their server's API}, from the proxy's routes."""
        r = await self.hub.get("/proxy")
        r.raise_for_status()
        out = {}
        for spec, route in r.json().items():
            user = (route.get("data") or {}).get("user")
            if user and not (route.get("data") or {}).get("server_name"):
                out[user] = route["target"].rstrip("/") + "/" + spec.lstrip("/").rstrip("/")
        return out

    async def overview(self) -> list[dict]:
        students = read_students(self.students_file)
        r = await self.hub.get("/users", params={"limit": 10000})
        r.raise_for_status()
        users = {u["name"]: u for u in r.json()}
        targets = await self._targets()

        async def one(name: str, entry: dict) -> dict:
            user = users.get(entry["user"]) or {}
            server = (user.get("servers") or {}).get("")
            row = {
                "student": name,
                "user": entry["user"],
                "server": "stopped",
                "kernels": [],
                "last_activity": (server or {}).get("last_activity") or user.get("last_activity"),
            }
            if server and server.get("pending"):
                row["server"] = "starting" if server["pending"] == "spawn" else server["pending"]
            elif server and server.get("ready"):
                row["server"] = "running"
                row["kernels"] = await self._kernels(targets.get(entry["user"]))
            return row

        rows = await asyncio.gather(*(one(n, e) for n, e in sorted(students.items())))
        return list(rows)

    async def _kernels(self, base: str | None) -> list[dict]:
        if base is None:
            return [{"state": "error", "detail": "no route to the server"}]
        try:
            sessions = (await self.servers.get(f"{base}/api/sessions")).json()
            kernels = (await self.servers.get(f"{base}/api/kernels")).json()
        except (httpx.HTTPError, ValueError) as exc:
            return [{"state": "error", "detail": type(exc).__name__}]
        paths = {s["kernel"]["id"]: s.get("path") for s in sessions if s.get("kernel")}
        return [
            {
                "id": k["id"],
                "state": k.get("execution_state", "unknown"),
                "notebook": paths.get(k["id"]),
                "last_activity": k.get("last_activity"),
            }
            for k in kernels
        ]

    def class_version(self, path: str) -> dict:
        for root in (self.versions_dir, self.notebooks_dir):
            f = (root / path).resolve()
            if f.is_relative_to(root.resolve()) and f.is_file():
                return json.loads(f.read_text())
        raise web.HTTPError(404, f"{path} is not a class notebook")

    async def _server_of(self, student: str) -> str:
        entry = read_students(self.students_file).get(student)
        if entry is None:
            raise web.HTTPError(404, f"no student {student!r} in this class")
        base = (await self._targets()).get(entry["user"])
        if base is None:
            raise web.HTTPError(409, f"{student}'s server is not running")
        return base

    async def _write(self, base: str, path: str, content: dict) -> None:
        url = f"{base}/api/contents/{quote(path)}"
        if (await self.servers.get(url, params={"content": "0"})).status_code == 200:
            # the student's work, recoverable: JupyterLab's Revert to Checkpoint
            (await self.servers.post(f"{url}/checkpoints")).raise_for_status()
        model = {"type": "notebook", "format": "json", "content": content}
        (await self.servers.put(url, json=model)).raise_for_status()

    async def reset(self, student: str, path: str) -> None:
        await self._write(await self._server_of(student), path, self.class_version(path))
        log.info("reset %s of %s", path, student)

    async def push(self, path: str, content: dict) -> dict[str, str]:
        """Write ``content`` as ``path`` for every student with a running server and
        keep it as the class version (reset uses it; stopped servers: reported)."""
        self.class_version(path)  # a class notebook: not any path
        f = self.versions_dir / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(content))
        targets = await self._targets()
        students = read_students(self.students_file)

        async def one(entry: dict) -> str:
            base = targets.get(entry["user"])
            if base is None:
                return "not running"
            try:
                await self._write(base, path, content)
            except httpx.HTTPError as exc:
                return f"failed: {type(exc).__name__}"
            return "updated"

        done = await asyncio.gather(*(one(e) for e in students.values()))
        log.info("pushed %s to %d students", path, len(students))
        return dict(zip(students, done, strict=True))

    async def teachers_copy(self, teacher: str, path: str) -> dict:
        base = (await self._targets()).get(teacher)
        if base is None:
            raise web.HTTPError(409, "start your own server: push sends your copy of the notebook")
        r = await self.servers.get(f"{base}/api/contents/{quote(path)}")
        if r.status_code != 200:
            raise web.HTTPError(404, f"you have no {path} in your server")
        return r.json()["content"]

    async def stop_kernel(self, student: str, kernel: str) -> None:
        base = await self._server_of(student)
        r = await self.servers.delete(f"{base}/api/kernels/{quote(kernel)}")
        if r.status_code == 404:
            raise web.HTTPError(404, f"{student} has no kernel {kernel}")
        r.raise_for_status()
        log.info("stopped kernel %s of %s", kernel, student)

    def release(self, student: str) -> None:
        with locked_students(self.students_file) as students:
            if student not in students:
                raise web.HTTPError(404, f"no student {student!r} in this class")
            students[student]["key"] = None
        log.info("released the name %s: the next login under it gets its server", student)


class Base(HubOAuthenticated, web.RequestHandler):
    @property
    def cls(self) -> Class:
        return self.settings["gridhub_class"]

    def body(self) -> dict:
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            try:
                return json.loads(self.request.body or b"{}")
            except ValueError:
                raise web.HTTPError(400, "the body is not JSON") from None
        return {k: self.get_body_argument(k) for k in self.request.body_arguments}

    def path_arg(self) -> str:
        path = self.body().get("path") or ""
        if not path.endswith(".ipynb") or path.startswith("/") or ".." in path.split("/"):
            raise web.HTTPError(400, f"path must name a class notebook (*.ipynb), not {path!r}")
        return path

    def done(self, result: dict) -> None:
        kind = self.request.headers.get("Content-Type", "")
        if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            self.redirect(self.settings["prefix"])  # a form on the page: back to it
        else:
            self.finish(result)


class ClassAPI(Base):
    @web.authenticated
    async def get(self):
        self.finish({"students": await self.cls.overview()})


class Reset(Base):
    @web.authenticated
    async def post(self, student: str):
        await self.cls.reset(student, self.path_arg())
        self.done({"reset": student})


class Push(Base):
    @web.authenticated
    async def post(self):
        path = self.path_arg()
        content = self.body().get("content")
        if not isinstance(content, dict):
            content = await self.cls.teachers_copy(self.current_user["name"], path)
        self.done({"pushed": await self.cls.push(path, content)})


class StopKernel(Base):
    @web.authenticated
    async def post(self, student: str, kernel: str):
        await self.cls.stop_kernel(student, kernel)
        self.done({"stopped": kernel})


class Release(Base):
    @web.authenticated
    async def post(self, student: str):
        self.cls.release(student)
        self.done({"released": student})


def _when(value: str | None) -> str:
    return html.escape((value or "-").replace("T", " ")[:19])


class Page(Base):
    @web.authenticated
    async def get(self):
        rows = await self.cls.overview()
        prefix = self.settings["prefix"]
        xsrf = self.xsrf_form_html()
        notebooks = sorted(p.name for p in self.cls.notebooks_dir.glob("*.ipynb"))
        options = "".join(f"<option>{html.escape(n)}</option>" for n in notebooks)
        lines = []
        for r in rows:
            s = html.escape(r["student"])
            act = f"{prefix}api/students/{quote(r['student'])}"
            kernels = "".join(
                f"<div class='kernel {html.escape(k['state'])}'>{html.escape(k['state'])}"
                f" {html.escape(k.get('notebook') or '')}"
                + (
                    f"<form method=post action='{act}/kernels/{quote(k['id'])}/stop'>{xsrf}"
                    "<button>stop</button></form>"
                    if k.get("id")
                    else ""
                )
                + "</div>"
                for k in r["kernels"]
            )
            lines.append(
                f"<tr class='student'><td class='name'>{s}</td>"  # noqa: S608 (HTML, no SQL)
                f"<td class='server {r['server']}'>{r['server']}</td><td>{kernels or '-'}</td>"
                f"<td>{_when(r['last_activity'])}</td><td>"
                f"<form method=post action='{act}/reset'>{xsrf}<select name=path>{options}"
                "</select><button>reset</button></form>"
                f"<form method=post action='{act}/release'>{xsrf}"
                "<button title='let this student log in from another computer'>"
                "new computer</button></form></td></tr>"
            )
        self.finish(
            PAGE.format(
                n=len(rows),
                rows="".join(lines) or "<tr><td colspan=5>nobody yet</td></tr>",
                push=f"<form method=post action='{prefix}api/push'>{xsrf}"
                f"<select name=path>{options}</select>"
                "<button>push my copy to every student</button></form>",
                teacher=html.escape(self.current_user["name"]),
            )
        )


PAGE = """<!doctype html><html><head><meta charset=utf-8><title>Teacher's view</title>
<meta http-equiv=refresh content=10><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}} form{{display:inline}}
.busy{{color:#b60}} .dead,.error{{color:#c00}} .idle,.running{{color:#070}}
</style></head><body>
<h1 id=teacher-view>The class: {n} students</h1><p>Logged in as {teacher}.
Refreshes every 10 s.</p><p>{push}</p>
<table id=class><tr><th>student</th><th>server</th><th>kernels</th><th>last activity</th>
<th>actions</th></tr>{rows}</table></body></html>"""


def main() -> None:
    p = argparse.ArgumentParser(description="The teacher's view of a masterclass.")
    p.add_argument("--students-file", required=True)
    p.add_argument("--notebooks-dir", required=True)
    p.add_argument("--versions-dir", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[gridhub-teacher %(asctime)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    student = r"([a-z0-9][a-z0-9._-]{0,31})"
    app = web.Application(
        [
            (prefix, Page),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(prefix, "api/class"), ClassAPI),
            (url_path_join(prefix, "api/push"), Push),
            (url_path_join(prefix, f"api/students/{student}/reset"), Reset),
            (url_path_join(prefix, f"api/students/{student}/release"), Release),
            (
                url_path_join(prefix, f"api/students/{student}/kernels/([0-9a-f-]+)/stop"),
                StopKernel,
            ),
        ],
        cookie_secret=os.urandom(32),
        gridhub_class=Class(args.students_file, args.notebooks_dir, args.versions_dir),
        prefix=prefix,
    )
    log.info("teacher's view at %s", prefix)
    serve(app)


if __name__ == "__main__":
    main()
