# ruff: noqa: S106
"""The checks on sandboxes and JDLs (gridhub.dirac.jdl) and the sandbox store's
signature gate (gridhub.embedded.store), with requests signed by botocore
(boto3's signer, independent of DiracX's signurlarity)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from gridhub.dirac import DiracXClient, SandboxChecksumMismatch, make_sandbox
from gridhub.dirac.jdl import output_file_name, pfn_checksum
from gridhub.embedded.store import SignatureGate
from static_token import StaticToken
from werkzeug.test import Client

KEY, SECRET = "GRIDHUBTESTKEY", "test-secret-of-the-store"
HOST = "http://dirac:8010"
DIGEST = "a" * 64
PFN = f"SB:SandboxSE|/S3/sandboxes/gridhub/gridhub_user/alice/sha256:{DIGEST}.tar.bz2"


def test_pfn_checksum():
    assert pfn_checksum(PFN) == ("sha256", DIGEST)
    for bad in ("SB:SandboxSE|/S3/sandboxes/a/b/c/file.tar.bz2", "sha256:abc.tar.bz2", ""):
        with pytest.raises(ValueError, match="carries no checksum"):
            pfn_checksum(bad)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (None, True),
        ("out.txt", True),
        ("std.out", True),
        ("/etc/passwd", False),
        ("../x", False),
        ("a/../../x", False),
        ("..", False),
        (".", False),
        ("sub/out", False),
        (["a", "b"], False),
        ("x\x00y", False),
    ],
)
def test_output_file_name(value, ok):
    attrs = {} if value is None else {"StdOutput": value}
    if ok:
        assert output_file_name(attrs, "StdOutput", "std.out") == (value or "std.out")
    else:
        with pytest.raises(ValueError, match=r"StdOutput .* inside the job's directory"):
            output_file_name(attrs, "StdOutput", "std.out")


async def test_a_sandbox_whose_bytes_differ_from_the_pfn_checksum_is_refused(tmp_path):
    good = make_sandbox({"job.sh": b"echo genuine\n"})
    digest = hashlib.sha256(good).hexdigest()
    pfn = f"SB:SandboxSE|/S3/sandboxes/v/g/u/sha256:{digest}.tar.bz2"
    served = {"bytes": make_sandbox({"job.sh": b"echo evil\n"})}

    def handler(req: httpx.Request):
        if req.url.path == "/api/jobs/sandbox":
            return httpx.Response(200, json={"url": "http://store.invalid/obj", "expires_in": 60})
        return httpx.Response(200, content=served["bytes"])

    dx = DiracXClient("http://diracx.invalid", StaticToken("t"))
    transport = httpx.MockTransport(handler)
    orig = httpx.AsyncClient.__init__

    def init(self, *a, **kw):
        kw["transport"] = transport
        orig(self, *a, **kw)

    httpx.AsyncClient.__init__ = init
    try:
        with pytest.raises(SandboxChecksumMismatch, match="DiracX recorded"):
            await dx.download_sandbox(pfn, tmp_path / "evil")
        assert not (tmp_path / "evil").exists()  # nothing unpacked
        served["bytes"] = good
        await dx.download_sandbox(pfn, tmp_path / "good")
        assert (tmp_path / "good" / "job.sh").read_bytes() == b"echo genuine\n"
    finally:
        httpx.AsyncClient.__init__ = orig
        await dx.aclose()


# ---------------------------------------------------------------------------
# the signature gate


def ok_app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"passed " + str(len(body)).encode()]


@pytest.fixture
def gate():
    return Client(SignatureGate(ok_app, KEY, SECRET))


def s3(key=KEY, secret=SECRET):
    return boto3.client(
        "s3",
        endpoint_url=HOST,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4"),  # as DiracX signs (not SigV2)
    )


def signed_request(client, operation: str, **params) -> dict:
    """The request botocore would send for an operation (not sent)."""
    seen = {}

    def capture(request, **_):
        seen["request"] = request
        raise _Stop

    client.meta.events.register("before-send.s3.*", capture)
    with pytest.raises(_Stop):
        getattr(client, operation)(**params)
    r = seen["request"]
    return {"method": r.method, "url": r.url, "headers": dict(r.headers), "body": r.body or b""}


class _Stop(Exception):
    pass


def send(gate, method, url, headers=None, body=b""):
    parts = urlsplit(url)
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (headers or {}).items()}
    return gate.open(
        parts.path,
        method=method,
        query_string=parts.query,
        headers=headers,
        data=body,
        base_url=f"{parts.scheme}://{parts.netloc}",
    )


KEY_NAME = f"gridhub/gridhub_user/alice/sha256:{DIGEST}.tar.bz2"


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("list_objects_v2", {"Bucket": "sandboxes"}),
        ("head_bucket", {"Bucket": "sandboxes"}),
        ("get_object", {"Bucket": "sandboxes", "Key": KEY_NAME}),
        ("put_object", {"Bucket": "sandboxes", "Key": KEY_NAME, "Body": b"data"}),
    ],
)
def test_header_signed_requests_pass_only_with_the_store_credential(gate, operation, params):
    good = signed_request(s3(), operation, **params)
    r = send(gate, good["method"], good["url"], good["headers"], good["body"])
    assert r.status_code == 200, r.get_data()
    bad = signed_request(s3(secret="guessed"), operation, **params)
    assert send(gate, bad["method"], bad["url"], bad["headers"], bad["body"]).status_code == 403
    stranger = signed_request(s3(key="SOMEONEELSE"), operation, **params)
    r = send(gate, stranger["method"], stranger["url"], stranger["headers"], stranger["body"])
    assert r.status_code == 403


def test_a_header_signed_body_cannot_be_swapped(gate):
    good = signed_request(s3(), "put_object", Bucket="sandboxes", Key=KEY_NAME, Body=b"data")
    r = send(gate, "PUT", good["url"], good["headers"], b"evil")
    assert r.status_code == 403
    assert b"x-amz-content-sha256" in r.get_data()


def test_presigned_urls_pass_for_their_object_and_method_only(gate):
    url = s3().generate_presigned_url(
        "get_object", Params={"Bucket": "sandboxes", "Key": KEY_NAME}, ExpiresIn=60
    )
    assert send(gate, "GET", url).status_code == 200
    assert send(gate, "GET", url.replace(DIGEST, "b" * 64)).status_code == 403
    assert send(gate, "PUT", url, body=b"evil").status_code == 403
    assert send(gate, "DELETE", url).status_code == 403
    expired = s3().generate_presigned_url(
        "get_object", Params={"Bucket": "sandboxes", "Key": KEY_NAME}, ExpiresIn=1
    )
    late = Client(SignatureGate(ok_app, KEY, SECRET, now=_later(seconds=5)))
    r = send(late, "GET", expired)
    assert r.status_code == 403 and b"expired" in r.get_data()


def _later(seconds: int):
    import datetime as dt

    return lambda: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def _form(url: str, fields: dict, data: bytes):
    files = {**fields, "file": ("file", data)}
    req = httpx.Request("POST", url, data=fields, files={"file": files.pop("file")})
    req.read()
    return req


def presigned_post(data: bytes, expires: int = 60):
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    fields = {"x-amz-checksum-algorithm": "SHA256", "x-amz-checksum-sha256": checksum}
    conditions = [["content-length-range", len(data), len(data)]] + [
        {k: v} for k, v in fields.items()
    ]
    return s3().generate_presigned_post(
        "sandboxes", KEY_NAME, Fields=fields, Conditions=conditions, ExpiresIn=expires
    )


def test_a_presigned_post_passes_with_its_bytes_only(gate):
    data = b"the sandbox"
    post = presigned_post(data)
    req = _form(post["url"], post["fields"], data)
    r = send(gate, "POST", post["url"], dict(req.headers), req.content)
    assert r.status_code == 200, r.get_data()
    # same size, other bytes: the declared checksum does not match
    req = _form(post["url"], post["fields"], b"the sandbax")
    r = send(gate, "POST", post["url"], dict(req.headers), req.content)
    assert r.status_code == 403 and b"checksum" in r.get_data()
    # another key under the same policy
    req = _form(post["url"], {**post["fields"], "key": "gridhub/other"}, data)
    assert send(gate, "POST", post["url"], dict(req.headers), req.content).status_code == 403
    # a forged policy
    forged = {**post["fields"], "policy": base64.b64encode(b'{"conditions": []}').decode()}
    req = _form(post["url"], forged, data)
    assert send(gate, "POST", post["url"], dict(req.headers), req.content).status_code == 403
    # no signature at all
    req = _form(post["url"], {"key": KEY_NAME}, data)
    assert send(gate, "POST", post["url"], dict(req.headers), req.content).status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/moto-api/reset"),
        ("POST", "/moto-api/reset-auth"),
        ("GET", "/moto-api/recorder/download-recording"),
        ("GET", "/moto-api/"),
        ("GET", "/"),
        ("GET", "/sandboxes"),
        ("PUT", f"/sandboxes/{KEY_NAME}"),
    ],
)
def test_anonymous_requests_and_motos_api_are_refused(gate, method, path):
    r = gate.open(path, method=method, base_url=HOST)
    assert r.status_code == 403


def test_motos_api_is_refused_even_when_signed(gate):
    req = signed_request(s3(), "list_objects_v2", Bucket="sandboxes")
    url = req["url"].replace("/sandboxes", "/moto-api/reset")
    assert send(gate, "POST", url, req["headers"]).status_code == 403
