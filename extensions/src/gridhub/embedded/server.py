"""Run the embedded DiracX server (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..ports import free_port
from . import (
    BUCKET,
    CS_DIR,
    DB_DIR,
    S3_RECORDING,
    SERVER_INFO,
    SIGNING_KEY,
    STATE_KEY,
    ensure_state,
    hashed_api_key,
    store_credentials,
)

log = logging.getLogger("gridhub.embedded")


def diracx_environment(
    state_dir: Path, url: str, s3_url: str, redirects: list[str] | None = None
) -> dict[str, str]:
    """Every DIRACX_* variable DiracX's app factory needs for this state dir
    (``redirects``: more allowed redirect URIs of its authorization-code flow)."""
    from diracx.core.extensions import DiracEntryPoint, select_from_extension

    env = {
        "DIRACX_CONFIG_BACKEND_URL": f"git+file://{state_dir / CS_DIR}",
        "DIRACX_SERVICE_AUTH_TOKEN_ISSUER": url,
        "DIRACX_SERVICE_AUTH_TOKEN_KEYSTORE": f"file://{state_dir / SIGNING_KEY}",
        "DIRACX_SERVICE_AUTH_STATE_KEY": (state_dir / STATE_KEY).read_text().strip(),
        "DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS": json.dumps(
            [f"{url}/api/docs/oauth2-redirect", *(redirects or [])]
        ),
        "DIRACX_SANDBOX_STORE_BUCKET_NAME": BUCKET,
        "DIRACX_SANDBOX_STORE_AUTO_CREATE_BUCKET": "true",
        "DIRACX_SANDBOX_STORE_S3_CLIENT_KWARGS": json.dumps(
            {
                "endpoint_url": s3_url,
                "aws_access_key_id": store_credentials(state_dir)[0],
                "aws_secret_access_key": store_credentials(state_dir)[1],
            }
        ),
        "DIRACX_LEGACY_EXCHANGE_HASHED_API_KEY": hashed_api_key(state_dir),
    }
    db_dir = state_dir / DB_DIR
    for ep in select_from_extension(group=DiracEntryPoint.SQL_DB):
        env[f"DIRACX_DB_URL_{ep.name.upper()}"] = (
            f"sqlite+aiosqlite:///{db_dir / (ep.name.lower() + '.db')}"
        )
    for ep in select_from_extension(group=DiracEntryPoint.OS_DB):
        env[f"DIRACX_OS_DB_{ep.name.upper()}"] = json.dumps(
            {"sqlalchemy_dsn": f"sqlite+aiosqlite:///{db_dir / (ep.name.lower() + '.db')}"}
        )
    return env


def start_sandbox_store(state_dir: Path, host: str, port: int):  # -> SandboxStore
    """moto's S3 server behind the signature gate (store.py), its content
    kept across restarts.

    moto holds objects in memory only. Its recorder (a documented moto
    feature, configured by MOTO_ENABLE_RECORDING / MOTO_RECORDER_FILEPATH,
    read when moto is imported) appends every request it serves to
    DIR/sandboxes.moto; at start the recording is replayed into the fresh
    server, so a sandbox uploaded before a restart can still be downloaded
    after it (a cluster's replacement workers need the cluster's sandbox).
    The recording holds the sandboxes' bytes, cluster keys among them: 0600
    in the 0700 state dir, as the other secrets.
    """
    recording = state_dir / S3_RECORDING
    os.close(os.open(recording, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    os.chmod(recording, 0o600)
    os.environ["MOTO_ENABLE_RECORDING"] = "true"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(recording)
    from .store import SandboxStore

    store = SandboxStore(host, port, *store_credentials(state_dir))
    if recording.stat().st_size:
        # before the store listens: nobody sees it half restored
        t0 = time.monotonic()
        n = store.replay(recording)
        log.info("Sandbox store restored (%d requests) in %.1f s", n, time.monotonic() - t0)
    store.warm_up()
    store.start()
    return store


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gridhub-embedded-dirac", description=__doc__)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--public-url",
        help="URL clients use (token issuer); default http://HOST:PORT",
    )
    p.add_argument("--s3-host", help="address for the S3 sandbox store (default: --host)")
    p.add_argument("--s3-port", type=int, default=0, help="0: a free port")
    p.add_argument(
        "--s3-public-url",
        help="S3 URL put into presigned URLs (must be reachable by clients)",
    )
    p.add_argument(
        "--allowed-redirect",
        action="append",
        default=[],
        help="another redirect URI DiracX's authorization-code flow accepts (repeatable;"
        " a hub's <public URL>/hub/dirac-callback when the CS names an IdP)",
    )
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    t0 = time.monotonic()

    state_dir = ensure_state(args.state_dir)
    url = (args.public_url or f"http://{args.host}:{args.port}").rstrip("/")

    s3_host = args.s3_host or args.host
    s3_port = args.s3_port or free_port(s3_host)
    moto = start_sandbox_store(state_dir, s3_host, s3_port)
    s3_url = args.s3_public_url or f"http://{s3_host}:{s3_port}"

    os.environ.update(diracx_environment(state_dir, url, s3_url, args.allowed_redirect))
    os.environ.setdefault("DIRACX_LOG_LEVEL", "WARNING")

    import uvicorn
    from diracx.testing.routers import create_app

    from .routes import add_gridhub_routes

    app = create_app()
    add_gridhub_routes(app, state_dir)
    # Read the CS now rather than answer 503 until the first background read.
    from diracx.core.config import ConfigSource

    override = app.dependency_overrides.get(ConfigSource.create)
    if getattr(override, "__self__", None) is not None:
        override.__self__.read()
    for noisy in ("werkzeug", "moto"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    info = {"url": url, "s3_url": s3_url, "pid": os.getpid()}
    info_path = state_dir / SERVER_INFO
    info_path.write_text(json.dumps(info))

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        access_log=args.log_level.lower() == "debug",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    print(
        f"gridhub-embedded-dirac: DiracX at {url}, S3 at {s3_url}, state in {state_dir} "
        f"(setup {time.monotonic() - t0:.1f}s)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    finally:
        moto.stop()
        info_path.unlink(missing_ok=True)
