"""Turn validated Settings + HubSecrets into JupyterHub configuration.

Called from hub_config/jupyterhub_config.py in a fixed order:
``apply_defaults(c)`` (built-in defaults), ``apply_settings(c, settings, secrets)``
(the deployer's validated settings), then the config file loads
``jupyterhub_config.d/*.py`` in sorted order.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import lowpriority
from .secrets import HubSecrets
from .settings import Settings

TOKEN_SERVICE = "gridhub-tokens"  # noqa: S105  (a service name)
STORAGE_SERVICE = "gridhub-storage"  # the data lake's token issuer (storagetokens.py)
STORAGE_SERVICE_PORT = 10107
GATEWAY_SERVICE = "dask-gateway"
POOL_SERVICE = "gridhub-pool"
TEACHER_SERVICE = "teacher"
MONITORING_SERVICE = "monitoring"
CLASS_GROUP = "class"  # every user the masterclass login let in (not the free seats)
STUDENTS_FILE = "masterclass-seats.json"  # student name -> hub user, key (hub.students)
BASE_SCOPES = ["openid", "profile", "email", "offline_access"]
MASTERCLASS_USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,31}$"
# The server's $JUPYTERHUB_API_TOKEN: JupyterHub's `server` role, plus access to
# the dask-gateway service (its JupyterHubAuthenticator accepts only tokens with
# that scope), so dask_gateway.Gateway() in a notebook and the Dask sidebar work.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={GATEWAY_SERVICE}",
]


def apply_defaults(c) -> None:
    """Security and behaviour defaults that hold in every GridHub."""
    c.JupyterHub.authenticate_prometheus = True  # /hub/metrics needs read:metrics
    c.JupyterHub.cleanup_servers = False  # servers survive a hub restart
    c.JupyterHub.allow_named_servers = False
    c.JupyterHub.implicit_spawn_seconds = 0
    c.JupyterHub.redirect_to_server = True
    c.JupyterHub.active_server_limit = 0
    c.Spawner.default_url = "/lab"
    c.Authenticator.enable_auth_state = False


def _sqlite_pragmas(connection, _record) -> None:
    import sqlite3

    if isinstance(connection, sqlite3.Connection):
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")


def sqlite_without_sync_per_commit() -> None:
    """The hub's SQLite database in WAL mode, synced at checkpoints, not at every commit.

    JupyterHub commits several times per login and OAuth handshake, in its one event
    loop; in SQLite's default mode each commit waits for the disk (fsyncs of a journal
    and of the database), which on a busy host held every other student's request up.
    WAL with synchronous=NORMAL keeps the database consistent after any crash; a crash
    of the host (not of the hub) may lose the last commits before it. JupyterHub takes
    no such setting (db_kwargs reach create_engine, not the connections), so this is a
    SQLAlchemy connect listener, for the hub process's SQLite connections only."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _sqlite_pragmas):
        event.listen(Engine, "connect", _sqlite_pragmas)


def _hub_port(url: str) -> int:
    return urlsplit(url).port or 8081


def apply_settings(c, s: Settings, sec: HubSecrets, config_dir: Path) -> None:
    state = Path(s.state_dir)
    c.JupyterHub.log_level = s.log_level
    c.JupyterHub.bind_url = s.public_url + "/"
    c.JupyterHub.hub_bind_url = s.hub_bind_url
    if s.hub_connect_host:
        c.JupyterHub.hub_connect_url = f"http://{s.hub_connect_host}:{_hub_port(s.hub_bind_url)}"
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    sqlite_without_sync_per_commit()
    c.JupyterHub.cookie_secret = bytes.fromhex(sec.cookie_secret)
    c.CryptKeeper.keys = [sec.crypt_key.encode()]
    c.JupyterHub.template_paths = [str(config_dir / "templates")]
    c.JupyterHub.template_vars = {"facility_name": s.facility_name, "gridhub_mode": s.mode}

    _proxy(c, s, sec, state)
    _spawner(c, s)
    if s.mode == "iam":
        _iam(c, s)
        if s.diracx_user_logins:
            _dirac_login(c, s, sec)
    else:
        _masterclass(c, s, sec)
    _services(c, s, sec)
    admins = set(s.admin_users)
    if s.mode == "masterclass":
        admins |= set(s.masterclass_teachers)
    c.Authenticator.admin_users = admins


def _proxy(c, s: Settings, sec: HubSecrets, state: Path) -> None:
    c.JupyterHub.proxy_class = "traefik_file"
    p = c.TraefikFileProviderProxy
    p.should_start = s.proxy_should_start
    p.traefik_api_url = s.proxy_api_url
    p.traefik_api_username = "jupyterhub"
    p.traefik_api_password = sec.proxy_api_password
    p.static_config_file = str(state / "traefik.toml")
    p.dynamic_config_file = str(s.traefik_dynamic_config_file or state / "rules.toml")
    p.traefik_log_level = "WARN"
    traefik = (
        s.traefik_bin or shutil.which("traefik") or str(Path(sys.executable).parent / "traefik")
    )
    # jupyterhub-traefik-proxy runs "traefik" from PATH
    bindir = str(Path(traefik).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _dask_env(s: Settings) -> dict[str, str]:
    env = {
        "DASK_LABEXTENSION__FACTORY__MODULE": "dask_gateway",
        "DASK_LABEXTENSION__FACTORY__CLASS": "GatewayCluster",
        "DASK_GATEWAY__ADDRESS": f"{s.public_url}/services/{GATEWAY_SERVICE}",
        # Dashboard links relative to the page the user is on (docs/hub.md, "Dask"):
        # they open under whatever name the user's browser reached the facility by,
        # where the public URL (https://gridhub.internal by default) may not resolve.
        "DASK_GATEWAY__PUBLIC_ADDRESS": f"{urlsplit(s.public_url).path}/services/{GATEWAY_SERVICE}",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "GRIDHUB_FACILITY_NAME": s.facility_name,
        # A LocalCluster's dashboard through the user's own server
        # (jupyter-server-proxy), not 127.0.0.1 which the browser cannot
        # reach; Dask fills the fields from the server's environment.
        "DASK_DISTRIBUTED__DASHBOARD__LINK": "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status",
    }
    if s.gateway_proxy_address:
        env["DASK_GATEWAY__PROXY_ADDRESS"] = s.gateway_proxy_address
    return env


def _spawner(c, s: Settings) -> None:
    c.Spawner.default_url = s.default_url
    c.Spawner.start_timeout = s.start_timeout
    # http_timeout counts from the process start: shorter than start_timeout, it kills
    # servers that a busy host (a masterclass starting at once) was still starting
    c.Spawner.http_timeout = s.start_timeout
    c.Spawner.cpu_limit = s.cpu_limit
    c.Spawner.mem_limit = s.mem_limit
    env: dict[str, Any] = {**_dask_env(s)}  # (str values, and the RuntimeDir below)
    # a click on a cluster card in the Dask sidebar opens its dashboard panes
    c.Spawner.args = [
        *_list(c.Spawner.args),
        "--ServerApp.jpserver_extensions=gridhub.hub.sidebar=True",
    ]
    if s.spawner == "docker":
        c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
        d = c.DockerSpawner
        d.image = s.notebook_image
        d.network_name = s.docker_network
        d.remove = True
        d.name_template = "jupyter-{username}"
        d.volumes = {"gridhub-home-{username}": "/home/jovyan"}
        d.notebook_dir = "/home/jovyan"
        # below the hub when the cores are all busy; kernels run in the container
        d.extra_host_config = {"cpu_shares": lowpriority.cpu_shares(s.server_nice)}
        if s.mode == "masterclass":
            env["GRIDHUB_MASTERCLASS_NOTEBOOKS"] = "/srv/gridhub/masterclass"
            d.volumes[f"{Path(s.masterclass_notebooks_dir)}"] = {
                "bind": "/srv/gridhub/masterclass",
                "mode": "ro",
            }
    elif s.local_unix_user:
        c.JupyterHub.spawner_class = "gridhub.hub.spawners.SharedAccountSpawner"
        c.SharedAccountSpawner.unix_user = s.local_unix_user
        c.SharedAccountSpawner.home_root = str(s.local_home_root)
    else:
        c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
    if s.spawner == "local":
        # the servers run the hub's python environment
        python = s.local_python or sys.executable
        bindir = str(Path(python).parent)
        c.Spawner.cmd = lowpriority.server_cmd(
            s.server_nice, [python, "-m", "jupyterhub.singleuser"]
        )
        env[lowpriority.ENV] = str(s.server_nice)  # for the server's kernels
        c.Spawner.args = [
            *_list(c.Spawner.args),
            "--MappingKernelManager.kernel_manager_class="
            "gridhub.hub.kernelpriority.LowPriorityKernelManager",
        ]
        env["PATH"] = bindir + os.pathsep + "/usr/local/bin:/usr/bin:/bin"
        # Kernels on unix sockets, not loopback TCP: fifty kernels picking free ports at
        # once collide ("Address already in use"), and a socket in a 0700 directory is
        # the user's alone. Short runtime dir: a socket path has at most 107 bytes.
        from .spawners import RuntimeDir

        c.Spawner.args = [*_list(c.Spawner.args), "--KernelManager.transport=ipc"]
        env["JUPYTER_RUNTIME_DIR"] = RuntimeDir(str(s.local_runtime_root))
    if s.lake_url:
        # gridhub.data reads through the XCache and asks the issuer for read tokens
        env["GRIDHUB_LAKE_URL"] = s.lake_url
        env["GRIDHUB_STORAGE_TOKEN_URL"] = f"{s.public_url}/services/{STORAGE_SERVICE}/token"
        if s.analysis_cache_url:
            # gridhub.analysiscache puts and gets there with the issuer's tokens
            env["GRIDHUB_ANALYSIS_CACHE_URL"] = s.analysis_cache_url
    c.Spawner.environment = env


def _iam(c, s: Settings) -> None:
    from .auth import discover

    assert s.iam_issuer  # IAM mode is the mode with an issuer
    doc = discover(s.iam_issuer)
    c.JupyterHub.authenticator_class = "gridhub.hub.auth.IAMAuthenticator"
    a = c.IAMAuthenticator
    a.facility_name = s.facility_name
    a.login_service = "IAM"
    a.client_id = s.iam_client_id
    if s.iam_client_secret is not None:
        a.client_secret = s.iam_client_secret.get_secret_value()
    a.basic_auth = s.iam_client_auth == "client_secret_basic"
    a.oauth_callback_url = f"{s.public_url}/hub/oauth_callback"
    a.authorize_url = doc["authorization_endpoint"]
    a.token_url = doc["token_endpoint"]
    a.userdata_url = doc["userinfo_endpoint"]
    if doc.get("end_session_endpoint"):
        a.logout_redirect_url = doc["end_session_endpoint"]
    a.scope = BASE_SCOPES + [x for x in s.iam_extra_scopes if x not in BASE_SCOPES]
    a.username_claim = s.iam_username_claim
    a.groups_claim = s.iam_groups_claim
    a.enable_auth_state = True
    a.refresh_pre_spawn = True
    a.auth_refresh_age = s.token_refresh_age
    a.refresh_margin = s.token_refresh_margin
    a.manage_groups = True
    from .auth import groups_from_claim

    a.auth_state_groups_key = groups_from_claim(s.iam_groups_claim)
    if s.iam_allowed_groups:
        a.allowed_groups = set(s.iam_allowed_groups)
    else:
        a.allow_all = True
    a.admin_groups = set(s.iam_admin_groups)
    allowed = ", ".join(sorted(s.iam_allowed_groups)) or "(any)"
    a.custom_403_message = (
        f"Your IAM account is not in a group allowed to use {s.facility_name}. "
        f"Allowed groups: {allowed}. Ask your experiment's IAM administrator to add you "
        "to one of them, then log in again."
    )
    # the user's access token as a file, kept fresh while the server runs
    c.Spawner.args = [
        *_list(c.Spawner.args),
        "--ServerApp.jpserver_extensions=gridhub.hub.tokenfile=True",
    ]
    env = dict(c.Spawner.environment)
    env["GRIDHUB_TOKEN_SERVICE_URL"] = (
        f"http://{s.connect_host}:{s.token_service_port}/services/{TOKEN_SERVICE}/"
    )
    env["GRIDHUB_TOKEN_FILE_REFRESH_SECONDS"] = str(s.token_file_interval)
    if s.spawner == "docker":
        env["BEARER_TOKEN_FILE"] = "/home/jovyan/.gridhub/bearer_token"  # noqa: S105
    else:
        env["BEARER_TOKEN_FILE"] = _token_file_path
    c.Spawner.environment = env


def _dirac_login(c, s: Settings, sec: HubSecrets) -> None:
    # each user's own DiracX login after the IAM one, handed to the gateway
    # (gridhub.hub.diraclogin; the robot identity is diracx_token_file's choice)
    a = c.IAMAuthenticator
    a.diracx_url = s.diracx_url
    a.diracx_vo = s.diracx_vo
    a.diracx_groups = s.diracx_groups
    a.diracx_redirect_uri = f"{s.public_url}/hub/dirac-callback"
    a.diracx_handoff_url = s.gateway_url.rstrip("/") + "/api/v1/dirac-logins"
    a.diracx_handoff_token = sec.gateway_api_token


def _token_file_path(spawner) -> str:
    from .spawners import unix_home_and_ids

    info = unix_home_and_ids(spawner)
    home = info[0] if info else os.path.expanduser("~")
    return os.path.join(home, ".gridhub", "bearer_token")


def _storage_service(s: Settings) -> dict:
    """The data lake's token issuer: its key in the hub's state, never elsewhere;
    with FACILITY_LAKE_TOKENS (compose) it also keeps the XCache's own token there."""
    cmd = [
        sys.executable,
        "-m",
        "gridhub.hub.storagetokens",
        f"--issuer={s.public_url}/services/{STORAGE_SERVICE}",
        f"--audience={s.public_url}/lake",
        f"--key-file={Path(s.state_dir) / 'secrets' / 'storage-issuer.pem'}",
        f"--cache-default-expiry={s.lake_cache_default_expiry}",  # tells notebooks the policy
        f"--cache-max-expiry={s.lake_cache_max_expiry}",
    ]
    if s.mode == "masterclass":
        # every student is in the class group: a shared writable area would let
        # one student change or delete another's objects; each keeps its own
        cmd.append(f"--no-area-group={CLASS_GROUP}")
    if os.environ.get("FACILITY_LAKE_TOKENS"):
        cmd.append(f"--cache-token-file={Path(os.environ['FACILITY_LAKE_TOKENS']) / 'cache-token'}")
    return {
        "name": STORAGE_SERVICE,
        "url": f"http://{s.connect_host}:{STORAGE_SERVICE_PORT}",
        "command": cmd,
        "display": False,
    }


def _list(value) -> list:
    try:
        return list(value)
    except TypeError:
        return []


def _masterclass(c, s: Settings, sec: HubSecrets) -> None:
    # the shared code, plus: a name stays its first student's, a class size, a limit on
    # failed logins (gridhub.hub.students says why)
    c.JupyterHub.authenticator_class = "gridhub.hub.students.MasterclassAuthenticator"
    a = c.MasterclassAuthenticator
    a.user_password = sec.masterclass_access_code
    a.admin_password = sec.masterclass_teacher_code
    a.allow_all = True
    a.students_file = str(Path(s.state_dir) / STUDENTS_FILE)
    a.class_size = s.masterclass_class_size
    a.failed_login_limit = s.masterclass_failed_login_limit
    a.failed_login_window = s.masterclass_failed_login_window
    a.pool_size = s.masterclass_pool_size
    # whoever logs in joins the group CLASS_GROUP: the idle-culler sees only it, so
    # the free seats' servers and warm kernels are never culled (_services)
    a.manage_groups = True
    a.class_group = CLASS_GROUP
    c.Authenticator.username_pattern = MASTERCLASS_USERNAME_PATTERN
    # JupyterHub's own bound on running servers, behind the class size: every student,
    # the pool's free seats and the teachers
    c.JupyterHub.active_server_limit = (
        s.masterclass_class_size
        + s.masterclass_pool_size
        + len(set(s.admin_users) | set(s.masterclass_teachers))
    )
    notebooks = Path(s.masterclass_notebooks_dir)
    python = s.local_python or sys.executable
    warm = warm_notebook(s)
    if warm:
        # the class notebook's kernel starts with the server (gridhub.hub.warmkernel)
        c.Spawner.args = [
            *_list(c.Spawner.args),
            "--ServerApp.jpserver_extensions=gridhub.hub.warmkernel=True",
        ]
        c.Spawner.environment = {**c.Spawner.environment, "GRIDHUB_WARM_NOTEBOOK": warm}

    async def copy_notebooks(spawner) -> None:
        import asyncio

        from .homecopy import MASTERCLASS, copy_as_user
        from .spawners import unix_home_and_ids

        info = unix_home_and_ids(spawner)
        if info is None or not await asyncio.to_thread(notebooks.is_dir):
            return  # containers copy at start-up (python -m gridhub.hub.homecopy)
        home, uid, gid = info
        await asyncio.to_thread(copy_as_user, MASTERCLASS, notebooks, home, uid, gid, python=python)

    c.Spawner.pre_spawn_hook = copy_notebooks


def warm_notebook(s: Settings) -> str | None:
    """The notebook whose kernel masterclass servers start ahead (None: none)."""
    if s.masterclass_warm_notebook is not None:
        return (
            None if s.masterclass_warm_notebook.lower() == "none" else s.masterclass_warm_notebook
        )
    found = sorted(Path(s.masterclass_notebooks_dir).glob("*.ipynb"))
    return found[0].name if found else None


def _services(c, s: Settings, sec: HubSecrets) -> None:
    services = [
        {
            "name": GATEWAY_SERVICE,
            "url": s.gateway_url,
            "api_token": sec.gateway_api_token,
            "display": False,
            # an external service may start after the hub: do not hold up start-up
            "timeout": 3,
        },
        {"name": "prometheus", "api_token": sec.metrics_token, "display": False},
    ]
    roles: list[dict[str, Any]] = [
        {"name": "metrics", "scopes": ["read:metrics"], "services": ["prometheus"]},
        {"name": "user", "scopes": ["self", f"access:services!service={GATEWAY_SERVICE}"]},
    ]
    if s.cull_idle_timeout:
        services.append(
            {
                "name": "idle-culler",
                "command": [
                    sys.executable,
                    "-m",
                    "jupyterhub_idle_culler",
                    f"--timeout={s.cull_idle_timeout}",
                    f"--cull-every={s.cull_every}",
                ],
                "display": False,
            }
        )
        scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
        if s.mode == "masterclass" and s.masterclass_pool_size:
            # the culler sees who logged in, not the free seats the pool keeps warm
            scopes = [f"{scope}!group={CLASS_GROUP}" for scope in scopes]
        roles.append({"name": "idle-culler", "scopes": scopes, "services": ["idle-culler"]})
    if s.mode == "masterclass" and s.masterclass_pool_size:
        services.append(
            {
                "name": POOL_SERVICE,
                "command": [
                    sys.executable,
                    "-m",
                    "gridhub.hub.pool",
                    f"--size={s.masterclass_pool_size}",
                    f"--concurrency={s.masterclass_pool_concurrency}",
                    f"--students-file={Path(s.state_dir) / STUDENTS_FILE}",
                    f"--class-size={s.masterclass_class_size}",
                ],
                "display": False,
            }
        )
        roles.append(
            {
                "name": POOL_SERVICE,
                # creates the seat users and starts their servers
                "scopes": ["list:users", "read:users", "read:servers", "admin:users", "servers"],
                "services": [POOL_SERVICE],
            }
        )
    if s.mode == "masterclass":
        state = Path(s.state_dir)
        services.append(
            {
                "name": TEACHER_SERVICE,
                "url": f"http://{s.connect_host}:{s.masterclass_teacher_port}",
                "command": [
                    sys.executable,
                    "-m",
                    "gridhub.hub.teacher",
                    f"--students-file={state / STUDENTS_FILE}",
                    f"--notebooks-dir={s.masterclass_notebooks_dir}",
                    f"--versions-dir={state / 'masterclass-pushed'}",
                ],
                "oauth_no_confirm": True,
            }
        )
        roles.append(
            {
                "name": TEACHER_SERVICE,
                # who is in (names, servers), where each server listens, and the servers'
                # API (kernels, the notebooks it resets and pushes). Who may open the
                # view: access:services!service=teacher, which admins (teachers) hold
                "scopes": ["list:users", "read:users", "read:servers", "proxy", "access:servers"],
                "services": [TEACHER_SERVICE],
            }
        )
    if s.prometheus_url:
        from .secrets import monitoring_dir

        # who may open it: access:services!service=monitoring, which admins (and so
        # masterclass teachers) hold; it needs no hub API scope (gridhub.hub.monitoring)
        services.append(
            {
                "name": MONITORING_SERVICE,
                "url": f"http://{s.connect_host}:{s.monitoring_port}",
                "command": [
                    sys.executable,
                    "-m",
                    "gridhub.hub.monitoring",
                    f"--prometheus-url={s.prometheus_url}",
                    f"--gateway-url={s.gateway_url}",
                    f"--token-file={monitoring_dir(Path(s.state_dir)) / 'metrics_token'}",
                    f"--listen-host={urlsplit(s.hub_bind_url).hostname or '127.0.0.1'}",
                ],
                "oauth_no_confirm": True,
            }
        )
    if s.mode == "iam":
        services.append(
            {
                "name": TOKEN_SERVICE,
                "url": f"http://{s.connect_host}:{s.token_service_port}",
                "command": [sys.executable, "-m", "gridhub.hub.tokenservice"],
                "display": False,
            }
        )
        roles.append(
            {
                "name": TOKEN_SERVICE,
                "scopes": ["read:users", "admin:auth_state"],
                "services": [TOKEN_SERVICE],
            }
        )
    if s.lake_url:
        services.append(_storage_service(s))
    server_scopes = list(SERVER_TOKEN_SCOPES)
    if s.mode == "iam":
        # reading one's IAM token from the token service takes this scope: users
        # hold it for themselves, their server token gets it (tokenservice.py)
        from .tokenservice import READ_SCOPE

        c.JupyterHub.custom_scopes = {
            READ_SCOPE: {"description": "Read your IAM access token from the token service."}
        }
        next(r for r in roles if r["name"] == "user")["scopes"].append(f"{READ_SCOPE}!user")
        server_scopes.append(f"{READ_SCOPE}!user")
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    # (JupyterHub gives the token the subset the user holds: every user holds all)
    c.Spawner.server_token_scopes = server_scopes
    if s.gateway_stop_clusters_with_server:
        from .clusters import StopClustersWithServer

        c.Spawner.post_stop_hook = StopClustersWithServer(
            s.gateway_url.rstrip("/") + "/api/v1", GATEWAY_SERVICE
        )
