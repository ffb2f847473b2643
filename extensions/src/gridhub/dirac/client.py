"""A thin async client for the DiracX 0.7 REST API, on httpx.

Only what GridHub uses: submit JDL jobs, search, status, kill, heartbeat and
sandboxes.  (``diracx.client`` is AutoREST-generated and pulls in the whole
DiracX client stack; for these few calls a direct httpx client is smaller
and lets us control retries, timeouts and error messages.)

Behaviour:

* transient failures (connection errors, 502/503/504) are retried with
  exponential backoff, at most ``retries`` times; a connection attempt times
  out after 3 s, so a dead server raises ``DiracXUnreachable`` in well under
  30 s.  A submission is not retried after the request may have reached the
  server (read timeout), so a job is never submitted twice.
* a 401 refreshes the token once and retries; a second 401 raises
  ``DiracXTokenExpired``.
* tokens are never logged nor put into messages.
"""

from __future__ import annotations

import asyncio
import bz2
import hashlib
import io
import logging
import tarfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from .errors import (
    DiracXError,
    DiracXForbidden,
    DiracXJDLRejected,
    DiracXTokenExpired,
    DiracXUnreachable,
    SandboxChecksumMismatch,
)
from .models import JobState, SandboxUpload
from .tokens import TokenSource

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
PER_PAGE = 100
_TRANSIENT = {502, 503, 504}


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:500]
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    return str(body)[:500]


def make_sandbox(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar.bz2 of ``files`` (same content, same bytes, same PFN).

    Every file is 0600: a sandbox may carry keys and tokens, and the job's
    work directory on a shared node may be readable by other local users."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return bz2.compress(buf.getvalue(), 9)


def extract_sandbox(data: bytes, dest: Path) -> None:
    """Unpack a sandbox archive (tar.bz2, tar.gz or tar.zst) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:
            tf.extractall(dest, members=_plain_members(tf, dest))  # noqa: S202 (checked)


def _plain_members(tf: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """The "data" filter's policy for Pythons without extraction filters
    (Debian 12's python3 is 3.11.2; filters came in 3.11.4): regular files and
    directories inside ``dest`` only, no setuid/setgid, no group/other write."""
    root = dest.resolve()
    out = []
    for m in tf.getmembers():
        if not (m.isfile() or m.isdir()) or not (root / m.name).resolve().is_relative_to(root):
            raise tarfile.TarError(f"sandbox member {m.name!r} is not a plain file inside it")
        m.mode &= 0o755
        out.append(m)
    return out


class DiracXClient:
    """Async DiracX client.  Use as ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        url: str,
        tokens: TokenSource,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        verify: bool | str = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.tokens = tokens
        self.retries = retries
        self.timeout = timeout
        self._timeout = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
        self._verify = verify
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"DiracXClient({self.url!r})"

    async def __aenter__(self) -> DiracXClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.is_closed or self._loop is not loop:
            self._http = httpx.AsyncClient(
                base_url=self.url,
                timeout=self._timeout,
                verify=self._verify,
                headers={"User-Agent": "gridhub-diracx-client"},
            )
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        if self._http is not None and not self._http.is_closed:
            try:
                await self._http.aclose()
            except RuntimeError:  # its loop is gone
                pass
        self._http = None

    # ------------------------------------------------------------------
    # transport

    async def _request(
        self,
        method: str,
        path: str,
        *,
        job_id: int | None = None,
        idempotent: bool = True,
        retry_on: frozenset[int] = frozenset(),
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call with auth, retries and error mapping.  Returns 2xx/416.

        ``retry_on``: further statuses asked again like the transient ones;
        once the retries are spent they end in a plain DiracXError."""
        refreshed = False
        attempt = 0
        token = await self.tokens.access_token()
        while True:
            try:
                r = await self._client().request(
                    method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
                )
            except httpx.TransportError as exc:
                may_have_arrived = not isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
                )
                if attempt >= self.retries or (may_have_arrived and not idempotent):
                    raise DiracXUnreachable(
                        f"{method} {path} failed after {attempt + 1} attempt(s): "
                        f"{type(exc).__name__}: {exc}".rstrip(": "),
                        self.url,
                        job_id,
                    ) from exc
                await self._backoff(attempt, method, path, type(exc).__name__)
                attempt += 1
                continue
            if r.status_code in retry_on and attempt < self.retries:
                await self._backoff(attempt, method, path, str(r.status_code))
                attempt += 1
                continue
            if r.status_code in _TRANSIENT:
                if attempt >= self.retries:
                    raise DiracXUnreachable(
                        f"{method} {path} answered {r.status_code} after {attempt + 1} "
                        f"attempt(s): {_detail(r)}",
                        self.url,
                        job_id,
                    )
                await self._backoff(attempt, method, path, str(r.status_code))
                attempt += 1
                continue
            if r.status_code == 401:
                if refreshed:
                    raise DiracXTokenExpired(
                        f"{method} {path}: token refused after a refresh: {_detail(r)}",
                        self.url,
                        job_id,
                    )
                refreshed = True
                token = await self.tokens.refresh()
                continue
            if r.status_code == 403:
                raise DiracXForbidden(f"{method} {path}: forbidden: {_detail(r)}", self.url, job_id)
            if r.is_success or r.status_code == 416:
                return r
            raise DiracXError(
                f"{method} {path} answered {r.status_code}: {_detail(r)}", self.url, job_id
            )

    def _json(self, r: httpx.Response, job_id: int | None = None) -> Any:
        """The body of a 2xx answer, which DiracX always sends as JSON.

        Anything else (an HTML page from a proxy or captive portal in front of
        DiracX, a truncated body) is a DiracXError naming the server and the
        call, so callers that handle DiracX failures handle this one too."""
        try:
            return r.json()
        except ValueError:
            body = " ".join(r.text[:200].split())
            raise DiracXError(
                f"{r.request.method} {r.request.url.path} answered {r.status_code} with a body "
                f"that is not JSON ({r.headers.get('content-type', 'no content type')}): {body!r}",
                self.url,
                job_id,
            ) from None

    async def _backoff(self, attempt: int, method: str, path: str, why: str) -> None:
        delay = min(0.5 * 2**attempt, 4.0)
        log.debug("DiracX %s %s %s: retrying in %.1fs (%s)", method, path, why, delay, self.url)
        await asyncio.sleep(delay)

    async def call(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        """One call of an API this client does not wrap (e.g. the embedded
        server's own routes), with auth, retries and errors as the others;
        returns the JSON body."""
        return self._json(await self._request(method, path, idempotent=idempotent, **kwargs))

    # ------------------------------------------------------------------
    # jobs

    async def submit_jdl(self, jdls: list[str]) -> list[int]:
        """Submit JDL jobs; return their job IDs (in order)."""
        try:
            r = await self._request("POST", "/api/jobs/jdl", json=list(jdls), idempotent=False)
        except DiracXError as exc:
            if type(exc) is DiracXError:  # 4xx/5xx that is not auth or availability
                raise DiracXJDLRejected(
                    f"job submission refused: {exc.msg}", self.url, reason=exc.msg
                ) from exc
            raise
        body = self._json(r)
        if not isinstance(body, list):
            raise DiracXJDLRejected(
                f"job submission refused: {str(body)[:500]}", self.url, reason=str(body)[:500]
            )
        return [int(job["JobID"]) for job in body]

    async def search(
        self,
        conditions: list[dict] | None = None,
        parameters: list[str] | None = None,
        sort: list[dict] | None = None,
    ) -> list[dict]:
        """POST /api/jobs/search, following all pages."""
        body: dict[str, Any] = {"search": conditions or []}
        if parameters:
            body["parameters"] = parameters
        if sort:
            body["sort"] = sort
        out: list[dict] = []
        page = 1
        while True:
            r = await self._request(
                "POST", "/api/jobs/search", params={"page": page, "per_page": PER_PAGE}, json=body
            )
            if r.status_code == 416:
                break
            jobs = self._json(r)
            out.extend(jobs)
            if r.status_code != 206 or not jobs:
                break
            # Content-Range: jobs <first>-<last>/<total>
            try:
                total = int(r.headers["Content-Range"].rsplit("/", 1)[1])
            except (KeyError, ValueError, IndexError):
                break
            if len(out) >= total:
                break
            page += 1
        return out

    async def statuses(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        """Status of each known job (unknown IDs are absent from the result)."""
        ids = sorted({int(i) for i in job_ids})
        if not ids:
            return {}
        jobs = await self.search(
            [{"parameter": "JobID", "operator": "in", "values": ids}],
            ["JobID", "Status", "MinorStatus", "ApplicationStatus"],
        )
        return {int(j["JobID"]): JobState.model_validate(j) for j in jobs}

    async def set_statuses(
        self,
        job_id: int,
        steps: Iterable[tuple[str, str] | tuple[str, str, str]],
        *,
        source: str = "gridhub",
        force: bool = False,
    ) -> None:
        """Several timestamped status steps in one PATCH (DiracX applies them in
        order; a step that is not a valid transition is silently ignored)."""
        now = datetime.now(UTC)
        updates: dict[str, dict[str, str]] = {}
        for i, step in enumerate(steps):
            status, minor, *rest = step
            upd = {"Status": status, "Source": source}
            if minor:
                upd["MinorStatus"] = minor
            if rest and rest[0]:
                upd["ApplicationStatus"] = rest[0]
            updates[(now + timedelta(milliseconds=i)).isoformat()] = upd
        await self._request(
            "PATCH",
            "/api/jobs/status",
            params={"force": "true"} if force else None,
            json={str(job_id): updates},
            job_id=job_id,
        )

    async def set_status(
        self, job_id: int, status: str, minor_status: str = "", application_status: str = ""
    ) -> None:
        """PATCH /api/jobs/status for one job (invalid transitions are ignored by DiracX)."""
        await self.set_statuses(job_id, [(status, minor_status, application_status)])

    async def kill(self, job_ids: Iterable[int]) -> None:
        """Kill jobs: DiracX 0.7 has no kill endpoint; setting status Killed is
        the kill (it also queues a ``Kill`` command returned by the job's next
        heartbeat). Jobs already final are left alone, as DIRAC's JobManager
        does: DiracX refuses their status change but would still overwrite
        the minor status, the reason a failed job failed. Jobs the caller
        cannot see are asked for all the same (DiracX answers 403 for
        another user's); jobs that do not exist are ignored."""
        final = {i for i, st in (await self.statuses(job_ids)).items() if st.final}
        ids = sorted({int(i) for i in job_ids} - final)
        if not ids:
            return
        ts = datetime.now(UTC).isoformat()
        body = {
            str(i): {
                ts: {
                    "Status": "Killed",
                    "MinorStatus": "Marked for termination",
                    "Source": "gridhub",
                }
            }
            for i in ids
        }
        try:
            await self._request(
                "PATCH", "/api/jobs/status", json=body, job_id=ids[0] if len(ids) == 1 else None
            )
        except DiracXError as exc:
            if type(exc) is DiracXError and "404" in exc.msg:
                return  # none of them exist any more
            raise

    async def patch_metadata(self, job_id: int, **attrs: Any) -> None:
        """PATCH /api/jobs/metadata: job parameters, and the Site attribute."""
        await self._request("PATCH", "/api/jobs/metadata", json={str(job_id): attrs}, job_id=job_id)

    async def heartbeat(self, job_id: int, **data: Any) -> list[str]:
        """PATCH /api/jobs/heartbeat; returns pending commands, e.g. ``["Kill"]``.

        ``data`` uses DiracX's HeartbeatData names (LoadAverage, MemoryUsed,
        Vsize, AvailableDiskSpace, CPUConsumed, WallClockTime, StandardOutput).
        DiracX 0.7 stores heartbeat records per (job, name, second): two heartbeats
        for one job within the same second fail with a 500 (DiracXError).
        """
        r = await self._request(
            "PATCH", "/api/jobs/heartbeat", json={str(job_id): data}, job_id=job_id
        )
        return [
            c["command"] for c in self._json(r, job_id) if int(c.get("job_id", job_id)) == job_id
        ]

    # ------------------------------------------------------------------
    # sandboxes

    async def upload_sandbox(self, files: Mapping[str, bytes]) -> str:
        """Upload ``files`` as one tar.bz2 sandbox; return its ``SB:...`` PFN for
        a JDL's InputSandbox.  Identical content is stored once."""
        archive = make_sandbox(files)
        info = {
            "checksum_algorithm": "sha256",
            "checksum": hashlib.sha256(archive).hexdigest(),
            "size": len(archive),
            "format": "tar.bz2",
        }
        # DiracX 0.7 registers a sandbox owner at their first upload, and two
        # first uploads at once (a new facility's first cluster starting its
        # workers) race on that insert: all but one answer 500. Initiating the
        # upload of content-addressed bytes is idempotent, so ask again.
        r = await self._request("POST", "/api/jobs/sandbox", json=info, retry_on=frozenset({500}))
        up = SandboxUpload.model_validate(self._json(r))
        if up.url:
            # A presigned S3 POST: no DiracX token goes to the object store.
            try:
                async with httpx.AsyncClient(timeout=self._timeout, verify=self._verify) as s3:
                    s3r = await s3.post(up.url, data=up.fields, files={"file": ("file", archive)})
            except httpx.TransportError as exc:
                raise DiracXUnreachable(
                    f"sandbox store unreachable ({type(exc).__name__})", self.url
                ) from exc
            if not s3r.is_success:
                raise DiracXError(
                    f"sandbox upload to the store answered {s3r.status_code}: {s3r.text[:300]}",
                    self.url,
                )
        return up.pfn

    async def download_sandbox(self, pfn: str, dest: Path, *, job_id: int | None = None) -> None:
        """Fetch one sandbox by PFN, check it, and unpack it into ``dest``.

        DiracX names a sandbox by the checksum its uploader declared (and the
        presigned upload is bound to it), so the PFN is DiracX's record of
        what the sandbox must be.  Bytes whose SHA-256 differs (an object
        overwritten in the store, a corrupted transfer) raise
        SandboxChecksumMismatch before anything is unpacked."""
        from .jdl import pfn_checksum

        try:
            algo, want = pfn_checksum(pfn)
        except ValueError as exc:
            raise SandboxChecksumMismatch(str(exc), self.url, job_id) from None
        if algo != "sha256":  # the only algorithm DiracX 0.7 knows
            raise SandboxChecksumMismatch(
                f"sandbox {pfn} has a {algo} checksum; only sha256 is checked", self.url, job_id
            )
        r = await self._request("GET", "/api/jobs/sandbox", params={"pfn": pfn}, job_id=job_id)
        url = self._json(r, job_id)["url"]
        try:
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._verify) as s3:
                s3r = await s3.get(url)
        except httpx.TransportError as exc:
            raise DiracXUnreachable(
                f"sandbox store unreachable ({type(exc).__name__})", self.url, job_id
            ) from exc
        if not s3r.is_success:
            raise DiracXError(
                f"sandbox {pfn} download answered {s3r.status_code}", self.url, job_id
            )
        got = hashlib.sha256(s3r.content).hexdigest()
        if got != want:
            raise SandboxChecksumMismatch(
                f"sandbox {pfn} refused: its content has sha256 {got}, DiracX recorded {want}",
                self.url,
                job_id,
            )
        extract_sandbox(s3r.content, Path(dest))

    async def job_sandboxes(self, job_id: int) -> dict[str, list[str]]:
        """Sandbox PFNs assigned to a job: ``{"Input": [...], "Output": [...]}``."""
        r = await self._request("GET", f"/api/jobs/{job_id}/sandbox", job_id=job_id)
        return {k: [str(p) for p in v] for k, v in self._json(r, job_id).items()}

    async def job_jdl(self, job_id: int) -> str:
        """The job's JDL.  DiracX 0.7 has no such endpoint (a real DIRAC site gets
        it from the matcher); only GridHub's embedded server serves it, at
        ``GET /api/gridhub/jobs/{job_id}/jdl``, for job administrators."""
        r = await self._request("GET", f"/api/gridhub/jobs/{job_id}/jdl", job_id=job_id)
        return str(self._json(r, job_id)["jdl"])

    async def job_accounting(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The accounting job parameters of ``job_ids`` (what the site that ran
        each job recorded it used; absent: none recorded). DiracX 0.7 cannot
        read job parameters back; only GridHub's embedded server serves them,
        at ``POST /api/gridhub/accounting/jobs`` (job administrators: any job;
        a user: their own)."""
        if not job_ids:
            return {}
        r = await self._request(
            "POST", "/api/gridhub/accounting/jobs", json={"job_ids": [int(i) for i in job_ids]}
        )
        return {int(k): v for k, v in self._json(r)["parameters"].items()}

    async def download_input_sandbox(self, job_id: int, dest: Path, pfns: list[str]) -> None:
        """Unpack the job's input sandboxes ``pfns`` into ``dest`` (for the local
        site, which takes them from the JDL's InputSandbox: DiracX 0.7 does not
        assign input sandboxes at submission)."""
        for pfn in pfns:
            await self.download_sandbox(pfn, Path(dest), job_id=job_id)

    async def upload_output_sandbox(self, job_id: int, files: Mapping[str, bytes]) -> str:
        """Upload ``files`` and assign them to the job as its output sandbox."""
        pfn = await self.upload_sandbox(files)
        await self._request("PATCH", f"/api/jobs/{job_id}/sandbox/output", json=pfn, job_id=job_id)
        return pfn
