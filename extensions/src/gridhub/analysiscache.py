"""The analysis cache on the data lake, for notebooks and Dask workers.

Intermediate results (a skim, histograms, a parquet file per partition) kept
for a while on the lake, in the user's own area or in a group's, each object
with an expiry date (docs/data-lake.md):

    from gridhub import analysiscache as cache
    tok = cache.token()                       # from the hub's issuer (notebook only)
    cache.put("skim/part-0.parquet", data, expires="2d")
    cache.put("hists.pkl", data, group="cms")  # the group's area (members only)
    cache.get("skim/part-0.parquet")           # bytes
    cache.list("skim/")                        # [Entry(key, size, expires_at)]
    # on a cluster's workers: hand them the token (it never prints itself)
    client.map(cache.put_parquet, keys, tables, token=tok)

Every call talks ``root://`` to ``$GRIDHUB_ANALYSIS_CACHE_URL`` with the
token in the request (the SciTokens ``authz`` parameter, over TLS: the
server offers it to every client), so each request is decided by the token it
carries, whatever connection the XRootD client reuses. Each wait is bounded by
``timeout``. Failures are a :class:`CacheError` (an OSError) naming the path
and the storage's answer: :class:`NoToken`, :class:`Refused`,
:class:`Expired` (the object's or the token's), :class:`NotFound`. No message
holds the token.
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gridhub import cachepolicy

CACHE_URL_ENV = "GRIDHUB_ANALYSIS_CACHE_URL"
#: XRootD's kXR_NotAuthorized and kXR_NotFound
NOT_AUTHORIZED, NOT_FOUND = 3010, 3011
#: a cached token is renewed this long before it expires
RENEW_BEFORE = 300


class CacheError(OSError):
    """An analysis-cache operation failed; the message names the path and the storage's answer."""


class NoToken(CacheError):
    pass


class Refused(CacheError):
    pass


class Expired(CacheError):
    pass


class NotFound(CacheError):
    pass


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Token:
    """A storage token of the hub's issuer that never shows itself: its repr
    names the user and expiry only, so it can travel to Dask workers (as an
    argument) and land in a traceback or a dashboard without leaking."""

    def __init__(
        self,
        value: str,
        *,
        default_expiry: int | None = None,
        max_expiry: int | None = None,
    ) -> None:
        self._value = value.strip()
        claims = _claims(self._value)
        self.user = str(claims.get("sub", ""))
        self.expires_at = int(claims.get("exp", 0))
        self.default_expiry = default_expiry
        self.max_expiry = max_expiry

    def secret(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<storage token of {self.user or '?'} until {_when(self.expires_at)}>"

    __str__ = __repr__


def _claims(token: str) -> dict[str, Any]:
    """The token's claims, unverified: only to name its user and expiry here
    (the storage verifies it)."""
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        raise NoToken("the analysis cache needs a storage token (a JWT); this is none") from None


_held: dict[str, Token] = {}
_lock = threading.Lock()


def token(environ: Mapping[str, str] | None = None, timeout: float = 20.0) -> Token:
    """This notebook user's storage token from the hub's issuer, renewed when
    less than five minutes are left. Pass it to workers as ``token=``."""
    from gridhub.data import storage_token

    with _lock:
        held = _held.get("token")
        if held is not None and held.expires_at - time.time() > RENEW_BEFORE:
            return held
        try:
            answer = storage_token(environ, timeout=timeout)
        except RuntimeError as exc:
            raise NoToken(f"no storage token for the analysis cache: {exc}") from None
        cache = answer.get("cache") or {}
        _held["token"] = Token(
            answer["access_token"],
            default_expiry=cache.get("default_expiry"),
            max_expiry=cache.get("max_expiry"),
        )
        return _held["token"]


def _token(tok: Token | str | None) -> Token:
    if tok is None:
        if os.environ.get("JUPYTERHUB_API_TOKEN"):
            return token()
        raise NoToken(
            "no storage token: on a Dask worker pass token= (analysiscache.token() in the notebook)"
        )
    return tok if isinstance(tok, Token) else Token(tok)


def area(group: str | None = None, *, token: Token | str | None = None) -> str:
    """The folder of ``group``'s area, else of the token's user."""
    if group is not None:
        return cachepolicy.group_area(group)
    return cachepolicy.user_area(_token(token).user)


def _path(key: str, group: str | None, tok: Token) -> str:
    parts = key.strip("/").split("/")
    if not key.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a cache key: {key!r} (a relative path without . or ..)")
    if key.endswith(cachepolicy.EXPIRES_SUFFIX):
        raise ValueError(f"keys may not end in {cachepolicy.EXPIRES_SUFFIX}: {key!r}")
    return f"{area(group, token=tok)}/{'/'.join(parts)}"


def _server(url: str | None) -> str:
    base = (url or os.environ.get(CACHE_URL_ENV) or "").strip().rstrip("/")
    if not base:
        raise CacheError(f"no analysis cache here: ${CACHE_URL_ENV} is not set")
    return base


def _with_token(path: str, tok: Token) -> str:
    return f"{path}?authz=Bearer%20{tok.secret()}"


def _fail(what: str, path: str, status: Any, tok: Token) -> CacheError:
    """The error for a failed request: its kind, the path, the storage's answer."""
    answer = str(status.message).strip().replace(tok.secret(), "<token>")
    text = f"analysis cache: cannot {what} {path}: {answer}"
    if status.errno == NOT_AUTHORIZED:
        if tok.expires_at and tok.expires_at <= time.time():
            return Expired(f"{text} (the storage token expired at {_when(tok.expires_at)})")
        return Refused(f"{text} (the token of {tok.user} does not cover it)")
    if status.errno == NOT_FOUND:
        return NotFound(text)
    return CacheError(text)


def _expiry(expires: Any, tok: Token, path: str) -> int:
    """The unix time an object put now expires: ``expires`` as a duration (7d,
    3600), a timedelta or a datetime; the issuer's default when None."""
    now = time.time()
    if expires is None:
        seconds = tok.default_expiry or cachepolicy.parse_duration("7d")
    elif isinstance(expires, datetime):
        seconds = int(expires.timestamp() - now)
    elif isinstance(expires, timedelta):
        seconds = int(expires.total_seconds())
    else:
        seconds = cachepolicy.parse_duration(expires)
    if seconds <= 0:
        raise ValueError(f"{path}: expiry {expires!r} is in the past")
    if tok.max_expiry and seconds > tok.max_expiry:
        raise ValueError(
            f"{path}: expiry {expires!r} is beyond the facility's maximum of"
            f" {tok.max_expiry} s (the cleaner would remove it then)"
        )
    return int(now + seconds)


def _write(server: str, path: str, data: bytes, tok: Token, timeout: float) -> None:
    from XRootD import client
    from XRootD.client.flags import OpenFlags

    seconds = max(1, int(timeout))
    with client.File() as f:
        status, _ = f.open(
            f"{server}//{_with_token(path, tok)}",
            OpenFlags.DELETE | OpenFlags.MAKEPATH,
            timeout=seconds,
        )
        if not status.ok:
            raise _fail("write", path, status, tok)
        status, _ = f.write(data, timeout=seconds)
        if status.ok:
            status, _ = f.close(timeout=seconds)
        if not status.ok:
            raise _fail("write", path, status, tok)


def _read(server: str, path: str, tok: Token, timeout: float) -> bytes:
    from XRootD import client

    seconds = max(1, int(timeout))
    with client.File() as f:
        status, _ = f.open(f"{server}//{_with_token(path, tok)}", timeout=seconds)
        if not status.ok:
            raise _fail("read", path, status, tok)
        chunks: builtins.list[bytes] = []
        offset = 0
        while True:
            status, data = f.read(offset, 8 << 20, timeout=seconds)
            if not status.ok:
                raise _fail("read", path, status, tok)
            if not data:
                return b"".join(chunks)
            chunks.append(bytes(data))
            offset += len(data)


def _check_token(tok: Token, path: str) -> None:
    if tok.expires_at and tok.expires_at <= time.time():
        raise Expired(
            f"analysis cache: {path}: the storage token expired at {_when(tok.expires_at)}"
            " (get a new one: analysiscache.token())"
        )


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    expires_at: int | None  # None: the object names none (the facility's default applies)


def put(
    key: str,
    data: bytes | os.PathLike[str],
    *,
    group: str | None = None,
    expires: Any = None,
    token: Token | str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> Entry:
    """Store ``data`` (bytes, or a local file's path) as ``key`` in the user's
    area (or ``group``'s), expiring after ``expires`` (default: the facility's)."""
    tok, server = _token(token), _server(url)
    path = _path(key, group, tok)
    _check_token(tok, path)
    when = _expiry(expires, tok, path)
    if not isinstance(data, bytes | bytearray | memoryview):
        with builtins.open(data, "rb") as f:
            data = f.read()
    _write(server, path, bytes(data), tok, timeout)
    _write(server, path + cachepolicy.EXPIRES_SUFFIX, f"{when}\n".encode(), tok, timeout)
    return Entry(key.strip("/"), len(data), when)


def _declared(server: str, path: str, tok: Token, timeout: float) -> int | None:
    try:
        return cachepolicy.parse_sidecar(
            _read(server, path + cachepolicy.EXPIRES_SUFFIX, tok, timeout).decode(errors="replace")
        )
    except NotFound:
        return None


def get(
    key: str,
    *,
    group: str | None = None,
    token: Token | str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> bytes:
    """The content of ``key``; :class:`Expired` once its expiry has passed
    (even before the cleaner removed it)."""
    tok, server = _token(token), _server(url)
    path = _path(key, group, tok)
    _check_token(tok, path)
    data = _read(server, path, tok, timeout)
    declared = _declared(server, path, tok, timeout)
    if declared is not None and declared <= time.time():
        raise Expired(f"analysis cache: {path} expired at {_when(declared)}")
    return data


def delete(
    key: str,
    *,
    group: str | None = None,
    token: Token | str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> None:
    from XRootD import client

    tok, server = _token(token), _server(url)
    path = _path(key, group, tok)
    _check_token(tok, path)
    fs = client.FileSystem(server)
    status, _ = fs.rm(_with_token(path, tok), timeout=max(1, int(timeout)))
    if not status.ok:
        raise _fail("delete", path, status, tok)
    fs.rm(_with_token(path + cachepolicy.EXPIRES_SUFFIX, tok), timeout=max(1, int(timeout)))


def list(
    prefix: str = "",
    *,
    group: str | None = None,
    token: Token | str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> builtins.list[Entry]:
    """The objects of the area (or of its folder ``prefix``), with their expiry."""
    from XRootD import client
    from XRootD.client.flags import DirListFlags, StatInfoFlags

    tok, server = _token(token), _server(url)
    root = area(group, token=tok)
    start = f"{root}/{prefix.strip('/')}".rstrip("/")
    _check_token(tok, start)
    fs, seconds = client.FileSystem(server), max(1, int(timeout))
    out: builtins.list[Entry] = []
    todo = [start]
    while todo:
        folder = todo.pop()
        status, listing = fs.dirlist(_with_token(folder, tok), DirListFlags.STAT, timeout=seconds)
        if not status.ok:
            if status.errno == NOT_FOUND or (
                folder == start == root and "No such" in status.message
            ):
                continue  # an area nobody wrote to yet
            raise _fail("list", folder, status, tok)
        for item in listing:
            path = f"{folder}/{item.name}"
            if item.statinfo.flags & StatInfoFlags.IS_DIR:
                todo.append(path)
            elif not item.name.endswith(cachepolicy.EXPIRES_SUFFIX):
                declared = _declared(server, path, tok, timeout)
                out.append(Entry(path[len(root) + 1 :], item.statinfo.size, declared))
    return sorted(out, key=lambda e: e.key)


def put_parquet(key: str, table: Any, **kwargs: Any) -> Entry:
    """Write ``table`` (a pyarrow Table, a pandas DataFrame or an awkward Array)
    as one parquet object: what a Dask task does with its partition."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        if hasattr(table, "to_parquet") and not hasattr(table, "fields"):
            table = pa.Table.from_pandas(table)
        else:  # an awkward Array
            import awkward as ak

            table = ak.to_arrow_table(table)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return put(key, buffer.getvalue(), **kwargs)


def get_parquet(key: str, **kwargs: Any) -> Any:
    """The pyarrow Table stored as ``key`` by :func:`put_parquet`."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(get(key, **kwargs)))


__all__ = [
    "CACHE_URL_ENV",
    "CacheError",
    "Entry",
    "Expired",
    "NoToken",
    "NotFound",
    "Refused",
    "Token",
    "area",
    "delete",
    "get",
    "get_parquet",
    "list",
    "put",
    "put_parquet",
    "token",
]
