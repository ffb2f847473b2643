"""Data access for the facility's notebooks and workers.

- :func:`data_dir` finds the shipped samples (``gridhub-samples fetch``):
  ``$GRIDHUB_DATA_DIR``, else ``~/data``, else ``/srv/data``.
- :func:`load_fileset` reads an AGC-style JSON fileset
  (``{process: {"files": {path: "Events"}, "metadata": {...}}}``); relative
  paths are taken relative to the fileset's directory.
- :func:`bearer_token` finds the user's token by the WLCG bearer-token
  discovery rules (``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``,
  ``$XDG_RUNTIME_DIR/bt_u<uid>``, ``/tmp/bt_u<uid>``); the hub keeps
  ``BEARER_TOKEN_FILE`` fresh in the notebook server.
- :func:`storage_options` / :func:`open` read https:// and root:// files
  with that token: an ``Authorization: Bearer`` header for https (fsspec),
  and for xrootd the token file, which the XRootD client reads itself.
- :func:`reachable` answers quickly whether a remote file's server can be
  reached at all, so a notebook can fall back to the shipped samples instead
  of hanging on a site that has no route to the internet.
- The data lake (docs/data-lake.md): ``$GRIDHUB_LAKE_URL`` is the facility's
  XCache (``root://lake-cache:1094`` in the compose facility). :func:`lake_url`
  names a path there, :func:`sample` and :func:`choose_fileset` read the
  shipped samples through it by default (the local copy is the fallback),
  :func:`storage_token` asks the hub's issuer for a short-lived token (it
  reads the datasets, and reads and writes the user's and its groups'
  analysis-cache areas: gridhub.analysiscache).
  :func:`warm` reads a fileset through the XCache once, before a cluster's
  workers need it, so their reads are served from the cache.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DATA_DIR_ENV = "GRIDHUB_DATA_DIR"
LAKE_URL_ENV = "GRIDHUB_LAKE_URL"
STORAGE_TOKEN_URL_ENV = "GRIDHUB_STORAGE_TOKEN_URL"  # noqa: S105 (a variable name)
#: where the lake's origin serves the shipped samples (readable without a token)
LAKE_SAMPLES = "/public/samples"
FILESET_NAME = "fileset.json"
REMOTE_SCHEMES = ("https", "http", "root", "xroot", "davs", "dav")
DEFAULT_PORTS = {"https": 443, "davs": 443, "http": 80, "dav": 80, "root": 1094, "xroot": 1094}


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory holding the shipped samples and their fileset.json."""
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser()
    home = Path(env.get("HOME") or Path.home()) / "data"
    for candidate in (home, Path("/srv/data")):
        if (candidate / FILESET_NAME).is_file():
            return candidate
    return Path("/srv/data")


def is_remote(path: str) -> bool:
    return urlsplit(str(path)).scheme.lower() in REMOTE_SCHEMES


def load_fileset(
    path: str | os.PathLike[str] | None = None,
    *,
    processes: Iterable[str] | None = None,
    max_files: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Read a JSON fileset; default: ``data_dir()/fileset.json``.

    Relative file paths become absolute (relative to the fileset's folder),
    ``processes`` keeps only those, ``max_files`` keeps the first N files of
    each process. Remote URLs are left as they are.
    """
    fileset_path = Path(path) if path is not None else data_dir() / FILESET_NAME
    raw = json.loads(Path(fileset_path).read_text())
    base = str(fileset_path.resolve().parent)
    return _resolve(raw, fileset_path, lambda name: os.path.join(base, name), processes, max_files)


def _resolve(
    raw: Any,
    fileset_path: str | os.PathLike[str],
    join: Callable[[str], str],
    processes: Iterable[str] | None,
    max_files: int | None,
) -> dict[str, dict[str, Any]]:
    """A parsed fileset with each relative file name made ``join(name)``."""
    if not isinstance(raw, dict):
        raise ValueError(f"{fileset_path}: a fileset is a JSON object of processes")
    wanted = None if processes is None else set(processes)
    if wanted is not None and (unknown := wanted - set(raw)):
        raise KeyError(f"{fileset_path} has no process {sorted(unknown)}; it has {sorted(raw)}")
    out: dict[str, dict[str, Any]] = {}
    for process, spec in raw.items():
        if wanted is not None and process not in wanted:
            continue
        files = spec.get("files") if isinstance(spec, dict) else None
        if isinstance(files, list):  # the AGC's list form: tree name Events
            files = dict.fromkeys(files, "Events")
        if not isinstance(files, dict):
            raise ValueError(f"{fileset_path}: process {process!r} has no 'files' mapping")
        resolved = {}
        for name, tree in list(files.items())[:max_files]:
            key = name if is_remote(name) or os.path.isabs(name) else join(name)
            resolved[key] = tree
        out[process] = {"files": resolved, "metadata": dict(spec.get("metadata") or {})}
    return out


def token_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The file holding the user's bearer token, by WLCG discovery (or None)."""
    env = os.environ if environ is None else environ
    candidates = []
    if env.get("BEARER_TOKEN_FILE"):
        candidates.append(Path(env["BEARER_TOKEN_FILE"]))
    uid = os.getuid()
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(env["XDG_RUNTIME_DIR"]) / f"bt_u{uid}")
    candidates.append(Path(f"/tmp/bt_u{uid}"))  # noqa: S108 - the WLCG discovery path
    for c in candidates:
        if c.is_file():
            return c
    return None


def bearer_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The user's bearer token, read fresh each call (the hub rotates the file)."""
    env = os.environ if environ is None else environ
    if env.get("BEARER_TOKEN", "").strip():
        return env["BEARER_TOKEN"].strip()
    path = token_file(env)
    if path is None:
        return None
    token = path.read_text().strip()
    return token or None


def storage_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options for uproot/fsspec to read ``url`` as the user.

    https/http: an ``Authorization: Bearer`` header when there is a token.
    xrootd: nothing; the XRootD client finds the token itself by the same
    discovery rules (``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``, ...; make sure
    they are in the environment of the workers too) and sends it with the
    ``ztn`` security protocol, which needs TLS: the server must offer it
    (``xrootd.tls``) and the client must trust its CA (``X509_CERT_DIR``).
    """
    scheme = urlsplit(str(url)).scheme.lower()
    if scheme in ("https", "http", "davs", "dav"):
        token = bearer_token(environ)
        if token:
            return {"headers": {"Authorization": f"Bearer {token}"}}
    return {}


def open(url: str | os.PathLike[str], **options: Any):
    """``uproot.open`` with the user's token for remote files."""
    import uproot

    url = str(url)
    merged = {**storage_options(url), **options}
    if "headers" in merged and "headers" in options:
        merged["headers"] = {**storage_options(url)["headers"], **options["headers"]}
    return uproot.open(url, **merged)


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Can a TCP connection to ``url``'s server be made within ``timeout`` s?

    Local paths are reachable when they exist. This is a cheap pre-check,
    not a promise that reading will succeed.
    """
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        return Path(parts.path if scheme else str(url)).exists()
    if scheme not in REMOTE_SCHEMES or not parts.hostname:
        return False
    port = parts.port or DEFAULT_PORTS[scheme]
    result: list[bool] = []

    def attempt() -> None:  # name lookup has no timeout of its own: bound it here
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _reason(exc: BaseException, limit: int = 200) -> str:
    """The exception's type and the first line of its message, shortened: the
    storage's answer (XRootD's ``[3010] ... permission denied``, an HTTP
    403) is what a user needs to see. Tokens are never in a URL we build."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def pick(url: str | None, local: str | os.PathLike[str], timeout: float = 3.0) -> tuple[str, str]:
    """``(path, description)``: ``url`` if it can be opened within ``timeout``
    seconds (with the user's token), else the local copy. Never hangs on a
    site without a route to the internet."""
    if url and reachable(url, timeout=timeout):
        try:
            with open(url, timeout=timeout) as f:
                f.keys()
            return str(url), f"online: {url}"
        except Exception as exc:  # any failure to read: use the local copy
            why = _reason(exc)
        return str(local), f"shipped sample {local} ({url} could not be read: {why})"
    why = f" ({url} not reachable)" if url else ""
    return str(local), f"shipped sample {local}{why}"


def lake_url(path: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``path`` on the facility's data lake, read through its XCache
    (``$GRIDHUB_LAKE_URL``); None when the facility has no lake."""
    env = os.environ if environ is None else environ
    base = (env.get(LAKE_URL_ENV) or "").strip().rstrip("/")
    if not base:
        return None
    return f"{base}//{path.lstrip('/')}"


#: bytes per read of a remote file (XCache fetches whole blocks anyway)
CHUNK = 8 << 20


def _chunks(url: str, timeout: float) -> Iterator[bytes]:
    """A remote file's content in CHUNK pieces, every wait bounded by
    ``timeout``; an OSError naming the storage's answer when it cannot be read."""
    if urlsplit(url).scheme.lower() not in ("root", "roots", "xroot"):
        import fsspec

        with fsspec.open(url, "rb", **storage_options(url)) as f:
            while chunk := f.read(CHUNK):
                yield chunk
        return
    from XRootD import client

    seconds = max(1, int(timeout))
    with client.File() as f:
        status, _ = f.open(url, timeout=seconds)
        if not status.ok:
            raise OSError(f"{url}: {status.message.strip()}")
        offset = 0
        while True:
            status, data = f.read(offset, CHUNK, timeout=seconds)
            if not status.ok:
                raise OSError(f"{url}: {status.message.strip()}")
            if not data:
                return
            offset += len(data)
            yield bytes(data)


def read_bytes(url: str, timeout: float = 10.0) -> bytes:
    """A small remote file's content, every wait bounded by ``timeout``;
    an OSError naming the storage's answer when it cannot be read."""
    return b"".join(_chunks(url, timeout))


def lake_fileset(
    path: str = f"{LAKE_SAMPLES}/{FILESET_NAME}",
    *,
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
    processes: Iterable[str] | None = None,
    max_files: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The fileset at ``path`` on the lake, read through the XCache; its
    relative file names become URLs through the XCache too."""
    url = lake_url(path, environ)
    if url is None:
        raise OSError(f"no data lake: ${LAKE_URL_ENV} is not set")
    raw = json.loads(read_bytes(url, timeout=timeout))
    folder = path.rsplit("/", 1)[0]
    return _resolve(
        raw, url, lambda name: lake_url(f"{folder}/{name}", environ) or name, processes, max_files
    )


def _read_through(url: str, timeout: float) -> int:
    """Read all of ``url`` (through the cache); return its size."""
    return sum(len(chunk) for chunk in _chunks(url, timeout))


def warm(files: Iterable[str] | Mapping[str, Any], client: Any = None, timeout: float = 60.0):
    """Fill the data lake's XCache with ``files`` before the analysis reads them.

    ``files``: URLs through the XCache (:func:`lake_url`), or a fileset as
    :func:`lake_fileset` returns it. Each file is read once, whole: the
    cache keeps what it fetched from the origin, and the workers' reads
    that follow are served from it. With a Dask ``client`` the files are
    read on its workers, in parallel (the workers need the token the
    storage wants, as for any read); otherwise here, one after the other.
    Returns ``{url: bytes read}``; an OSError names a file that could not
    be read and the storage's answer."""
    if isinstance(files, Mapping):
        urls = [str(u) for spec in files.values() for u in spec["files"]]
    else:
        urls = [str(u) for u in files]
    if client is None:
        return {u: _read_through(u, timeout) for u in urls}
    futures = client.map(_read_through, urls, timeout=timeout, pure=False)
    return dict(zip(urls, client.gather(futures), strict=True))


def sample(name: str, url: str | None = None, timeout: float = 3.0) -> tuple[str, str]:
    """``(path, description)`` of a shipped sample: ``url`` when given, else its
    copy on the lake (through the XCache), when it opens within ``timeout``
    seconds; else the local copy (:func:`data_dir`)."""
    return pick(url or lake_url(f"{LAKE_SAMPLES}/{name}"), data_dir() / name, timeout=timeout)


def storage_token(environ: Mapping[str, str] | None = None, timeout: float = 20.0) -> dict:
    """A short-lived token for the lake from the hub's issuer:
    ``{"access_token", "expires_at", "scope", "cache"}`` (scope: read the
    datasets; read and write the analysis-cache areas of the user and its
    groups, gridhub.cachepolicy.scopes). Asked with this server's
    JupyterHub token; the token is returned, never printed or logged."""
    import httpx

    env = os.environ if environ is None else environ
    url, hub_token = env.get(STORAGE_TOKEN_URL_ENV), env.get("JUPYTERHUB_API_TOKEN")
    if not url or not hub_token:
        raise RuntimeError(
            f"no storage-token issuer here (${STORAGE_TOKEN_URL_ENV} and a JupyterHub token"
            " are set on the facility's notebook servers)"
        )
    r = httpx.post(url, headers={"Authorization": f"token {hub_token}"}, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(f"the storage-token issuer refused: HTTP {r.status_code}")
    return r.json()


def choose_fileset(
    remote: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 3.0,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, Any]], str]:
    """The fileset to analyse and a description of where it comes from.

    ``remote`` (default ``$GRIDHUB_FILESET``) when its first file's server
    answers; else the shipped samples on the data lake, through its XCache,
    when the facility has one and it answers within ``timeout`` seconds; else
    the shipped samples' local copy.
    """
    remote = remote if remote is not None else os.environ.get("GRIDHUB_FILESET") or None
    if remote:
        fileset = load_fileset(remote, **kwargs)
        first = next((f for p in fileset.values() for f in p["files"]), None)
        if first is not None and reachable(first, timeout=timeout):
            return fileset, f"{remote} (first file {first})"
    why = f" ({remote} not reachable)" if remote else ""
    lake = lake_url(f"{LAKE_SAMPLES}/{FILESET_NAME}")
    if not remote and lake:
        try:
            if not reachable(lake, timeout=timeout):
                raise OSError("not reachable")
            return lake_fileset(timeout=timeout, **kwargs), f"the data lake: {lake}"
        except Exception as exc:  # any failure: the local copy
            why = f" ({lake} could not be read: {_reason(exc)})"
    local = data_dir() / FILESET_NAME
    return load_fileset(local, **kwargs), f"shipped samples {local}{why}"
