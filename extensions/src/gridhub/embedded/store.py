"""The sandbox store: moto's S3 server behind a gate that checks AWS signatures.

Sandboxes carry each cluster's key and token, so the store must answer only
DiracX (which holds the store's credential) and whoever DiracX handed a
presigned URL (the gateway uploading a cluster's sandbox, a site fetching a
job's).  moto alone cannot do that:

* it answers anonymous requests by default; its IAM enforcement
  (``INITIAL_NO_AUTH_ACTION_COUNT``) checks only header-signed requests and
  fails on presigned URLs and presigned POST uploads, which DiracX's
  sandbox flow is built on;
* for an existing object it does not check a presigned URL's signature;
* ``/moto-api/`` (reset, reset-auth, recorder download, dashboard) answers
  anyone and has no switch.

So the WSGI app moto serves is wrapped in ``SignatureGate``: ``/moto-api/``
is refused, and every other request must carry a valid AWS Signature V4 made
with the store's credential: an ``Authorization`` header (DiracX), a
presigned URL (query string, not expired) or a presigned POST policy (not
expired, its conditions met, and the uploaded bytes' SHA-256 equal to the
checksum the policy names, as S3 checks it).  Refusals are answered 403 and
logged with the reason (never a signature or the secret).

The content survives restarts through moto's recorder (see server.py); the
recording is replayed in-process into moto's app, not through the gate (the
recorded signatures have expired by then).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

log = logging.getLogger("gridhub.embedded.store")

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=15)  # as S3: a header-signed request older than this is refused
MAX_BODY = 110 * 1024 * 1024  # DiracX's sandbox limit (100 MiB) and the form around it


class Refused(Exception):
    """Why the gate refused a request (logged, and sent to the client)."""


def _uri_encode(s: str, safe: str = "-_.~") -> str:
    return quote(s, safe=safe)


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def _amz_time(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise Refused(f"bad X-Amz-Date {value!r}") from None


class SignatureGate:
    """WSGI middleware: only requests signed with (access_key, secret_key) pass."""

    def __init__(
        self,
        app: Callable,
        access_key: str,
        secret_key: str,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.app = app
        self.access_key = access_key
        self.secret_key = secret_key
        self.now = now

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        try:
            if path.startswith("/moto-api"):
                raise Refused("moto's management API is disabled")
            self._check(environ, method)
        except Refused as exc:
            client = environ.get("REMOTE_ADDR", "?")
            log.warning("Sandbox store refused %s %s from %s: %s", method, path, client, exc)
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                f"<Message>{_xml(str(exc))}</Message></Error>"
            ).encode()
            start_response(
                "403 Forbidden",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self.app(environ, start_response)

    # ------------------------------------------------------------------

    def _check(self, environ: dict, method: str) -> None:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        params = dict(query)
        auth = environ.get("HTTP_AUTHORIZATION")
        if auth:
            self._check_header_signature(environ, method, query, auth)
        elif "X-Amz-Signature" in params:
            self._check_presigned_url(environ, method, query, params)
        elif method == "POST" and environ.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
            self._check_presigned_post(environ)
        else:
            raise Refused("no signature: the store answers signed requests only")

    def _scope(self, credential: str) -> tuple[str, str, str]:
        """(date, region, service) of ``KEY/date/region/service/aws4_request``."""
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise Refused("malformed credential scope")
        if not hmac.compare_digest(parts[0], self.access_key):
            raise Refused("unknown access key")
        return parts[1], parts[2], parts[3]

    def _verify(self, string_to_sign: str, scope: tuple[str, str, str], signature: str) -> None:
        key = _signing_key(self.secret_key, *scope)
        good = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, signature.lower()):
            raise Refused("signature does not match")

    def _canonical(
        self,
        environ: dict,
        method: str,
        query: list[tuple[str, str]],
        signed_headers: str,
        payload: str,
    ) -> str:
        # The path as the signer saw it: decoded once, then AWS-encoded (S3 keys
        # are not normalised: no removal of "." or "//").
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        raw_path = raw_path.split("?", 1)[0] or quote(environ.get("PATH_INFO", "/"))
        uri = _uri_encode(unquote(raw_path), safe="/-_.~")
        qs = "&".join(
            f"{_uri_encode(k)}={_uri_encode(v)}"
            for k, v in sorted((k, v) for k, v in query if k != "X-Amz-Signature")
        )
        lines = []
        for name in signed_headers.split(";"):
            value = self._header(environ, name)
            if value is None:
                raise Refused(f"signed header {name!r} missing")
            lines.append(f"{name}:{' '.join(value.split())}\n")
        return "\n".join([method, uri, qs, "".join(lines), signed_headers, payload])

    @staticmethod
    def _header(environ: dict, name: str) -> str | None:
        if name == "content-type":
            return environ.get("CONTENT_TYPE")
        if name == "content-length":
            return environ.get("CONTENT_LENGTH")
        return environ.get("HTTP_" + name.upper().replace("-", "_"))

    def _string_to_sign(self, amz_date: str, scope: tuple[str, str, str], canonical: str) -> str:
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return "\n".join([ALGORITHM, amz_date, "/".join([*scope, "aws4_request"]), digest])

    def _check_header_signature(
        self, environ: dict, method: str, query: list[tuple[str, str]], auth: str
    ) -> None:
        algo, _, rest = auth.partition(" ")
        if algo != ALGORITHM:
            raise Refused(f"authorization {algo!r} is not {ALGORITHM}")
        fields = dict(item.strip().split("=", 1) for item in rest.split(",") if "=" in item)
        try:
            credential, signed, signature = (
                fields["Credential"],
                fields["SignedHeaders"],
                fields["Signature"],
            )
        except KeyError as exc:
            raise Refused(f"authorization without {exc.args[0]}") from None
        scope = self._scope(credential)
        if "host" not in signed.split(";"):
            raise Refused("the host header is not signed")
        amz_date = self._header(environ, "x-amz-date") or ""
        if abs(self.now() - _amz_time(amz_date)) > MAX_SKEW:
            raise Refused("request time too far from the store's clock")
        payload = self._header(environ, "x-amz-content-sha256")
        if payload is None:
            raise Refused("no x-amz-content-sha256")
        if payload != "UNSIGNED-PAYLOAD":
            body = _buffer_body(environ)
            if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), payload):
                raise Refused("the body does not match x-amz-content-sha256")
        canonical = self._canonical(environ, method, query, signed, payload)
        self._verify(self._string_to_sign(amz_date, scope, canonical), scope, signature)

    def _check_presigned_url(
        self, environ: dict, method: str, query: list[tuple[str, str]], params: dict[str, str]
    ) -> None:
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            raise Refused(f"presigned URL algorithm is not {ALGORITHM}")
        try:
            scope = self._scope(params["X-Amz-Credential"])
            amz_date = params["X-Amz-Date"]
            expires = int(params["X-Amz-Expires"])
            signed = params["X-Amz-SignedHeaders"]
        except (KeyError, ValueError):
            raise Refused("incomplete presigned URL") from None
        if self.now() > _amz_time(amz_date) + dt.timedelta(seconds=expires):
            raise Refused("presigned URL expired")
        canonical = self._canonical(environ, method, query, signed, "UNSIGNED-PAYLOAD")
        self._verify(
            self._string_to_sign(amz_date, scope, canonical), scope, params["X-Amz-Signature"]
        )

    def _check_presigned_post(self, environ: dict) -> None:
        from werkzeug.formparser import parse_form_data

        body = _buffer_body(environ)
        probe = {**environ, "wsgi.input": io.BytesIO(body)}
        _, form, files = parse_form_data(probe, max_form_memory_size=MAX_BODY)
        fields = {k.lower(): v for k, v in form.items()}
        if fields.get("x-amz-algorithm") != ALGORITHM:
            raise Refused(f"presigned POST algorithm is not {ALGORITHM}")
        try:
            scope = self._scope(fields["x-amz-credential"])
            policy_b64, signature = fields["policy"], fields["x-amz-signature"]
        except KeyError as exc:
            raise Refused(f"presigned POST without {exc.args[0]}") from None
        self._verify(policy_b64, scope, signature)  # the policy itself is what is signed
        try:
            policy = json.loads(base64.b64decode(policy_b64))
            expiration = dt.datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            raise Refused("unreadable POST policy") from None
        if self.now() > expiration:
            raise Refused("presigned POST expired")
        upload = files.get("file")
        data = upload.read() if upload is not None else b""
        bucket = environ.get("PATH_INFO", "").strip("/").split("/", 1)[0]
        values = {**fields, "bucket": bucket}
        covered = {"policy", "x-amz-signature", "file"}
        for cond in policy.get("conditions", []):
            covered |= _meet(cond, values, len(data))
        extra = set(fields) - covered
        if extra:
            raise Refused(f"form fields outside the policy: {sorted(extra)}")
        # S3 checks the declared checksum against the bytes: so does the store
        declared = fields.get("x-amz-checksum-sha256")
        if declared is not None:
            got = base64.b64encode(hashlib.sha256(data).digest()).decode()
            if not hmac.compare_digest(got, declared):
                raise Refused("the upload does not match its x-amz-checksum-sha256")


def _meet(cond: Any, values: dict[str, str], size: int) -> set[str]:
    """Check one POST policy condition; return the field names it covers."""
    if isinstance(cond, dict):
        ((name, want),) = cond.items()
        name = name.lower()
        if values.get(name) != want:
            raise Refused(f"POST policy condition on {name} not met")
        return {name}
    if isinstance(cond, list) and len(cond) == 3:
        op, name, want = cond
        if op == "content-length-range":
            if not int(name) <= size <= int(want):
                raise Refused("upload size outside the policy's content-length-range")
            return set()
        name = str(name).lstrip("$").lower()
        have = values.get(name, "")
        if (op == "eq" and have != want) or (op == "starts-with" and not have.startswith(want)):
            raise Refused(f"POST policy condition on {name} not met")
        if op not in ("eq", "starts-with"):
            raise Refused(f"unknown POST policy condition {op!r}")
        return {name}
    raise Refused("malformed POST policy condition")


def _buffer_body(environ: dict) -> bytes:
    """Read the body once, leave a fresh copy for moto."""
    if "gridhub.body" not in environ:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Refused("bad Content-Length") from None
        if length > MAX_BODY:
            raise Refused("body too large")
        environ["gridhub.body"] = environ["wsgi.input"].read(length) if length else b""
    body = environ["gridhub.body"]
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SandboxStore:
    """moto's S3 app, gated, served by werkzeug in a thread (as moto's own
    ThreadedMotoServer serves it, with the gate in front)."""

    def __init__(self, host: str, port: int, access_key: str, secret_key: str) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.host, self.port = host, port
        self.moto_app = DomainDispatcherApplication(create_backend_app)
        self.app = SignatureGate(self.moto_app, access_key, secret_key)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def replay(self, recording: Path) -> int:
        """Replay moto's recording (JSON lines: method, url, headers, body)
        straight into moto's app: the requests were checked when first made."""
        n = 0
        with self._direct() as client, recording.open() as fh:
            for line in fh:
                entry = json.loads(line)
                body = entry.get("body") or b""
                if entry.get("body_encoded"):
                    body = base64.b64decode(body)
                headers = {
                    k: v
                    for k, v in (entry.get("headers") or {}).items()
                    if k.lower() not in ("transfer-encoding", "content-length")
                }
                client.open(entry["url"], method=entry["method"], headers=headers, data=body)
                n += 1
        return n

    def warm_up(self) -> None:
        """Have moto build its S3 backend now (imports of seconds, minutes on a
        loaded machine), in-process: DiracX's first request, creating its
        bucket at start-up, timed out on it and stopped DiracX."""
        with self._direct() as client:
            client.get("/", headers={"Host": f"{self.host}:{self.port}"})

    @contextlib.contextmanager
    def _direct(self):
        """A client of moto's app itself (no gate, no network), its requests not
        recorded: for what the store does to itself."""
        from moto.moto_api import recorder
        from werkzeug.test import Client

        recorder.stop_recording()
        try:
            yield Client(self.moto_app)
        finally:
            recorder.start_recording()

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        self._server = server = make_server(
            self.host, self.port, self.app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
