"""gridhub.hub.config turns settings into JupyterHub config (no processes started)."""

from __future__ import annotations

from pathlib import Path

from hub_build import build, offline_discovery


def test_masterclass_docker(tmp_path):
    c = build({"GRIDHUB_MASTERCLASS_TEACHERS": "ms-frizzle"}, tmp_path)
    assert c.JupyterHub.authenticator_class == "gridhub.hub.students.MasterclassAuthenticator"
    assert len(c.MasterclassAuthenticator.user_password) >= 8
    assert len(c.MasterclassAuthenticator.admin_password) >= 32
    assert c.Authenticator.admin_users == {"ms-frizzle"}
    assert c.JupyterHub.spawner_class == "dockerspawner.DockerSpawner"
    assert c.DockerSpawner.image == "gridhub/notebook:latest"
    env = c.Spawner.environment
    assert env["DASK_LABEXTENSION__FACTORY__MODULE"] == "dask_gateway"
    assert env["DASK_LABEXTENSION__FACTORY__CLASS"] == "GatewayCluster"
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    assert env["DASK_GATEWAY__ADDRESS"].endswith("/services/dask-gateway")
    assert c.JupyterHub.authenticate_prometheus is True
    assert c.JupyterHub.proxy_class == "traefik_file"
    names = {s["name"] for s in c.JupyterHub.services}
    assert {"dask-gateway", "idle-culler", "prometheus"} <= names
    assert "gridhub-tokens" not in names


def test_iam_local(tmp_path, monkeypatch):
    offline_discovery(monkeypatch)
    c = build(
        {
            "GRIDHUB_IAM_ISSUER": "https://iam.example.org",
            "GRIDHUB_IAM_CLIENT_ID": "gridhub",
            "GRIDHUB_IAM_CLIENT_SECRET": "s3cret",
            "GRIDHUB_IAM_EXTRA_SCOPES": "wlcg.groups",
            "GRIDHUB_IAM_GROUPS_CLAIM": "wlcg.groups",
            "GRIDHUB_IAM_ALLOWED_GROUPS": "atlas",
            "GRIDHUB_SPAWNER": "local",
        },
        tmp_path,
    )
    a = c.IAMAuthenticator
    assert a.token_url == "https://iam.example.org/token"  # noqa: S105
    assert a.scope == ["openid", "profile", "email", "offline_access", "wlcg.groups"]
    assert a.enable_auth_state and a.refresh_pre_spawn and a.manage_groups
    assert a.allowed_groups == {"atlas"}
    assert a.auth_state_groups_key({"oauth_user": {"wlcg.groups": ["/atlas", "/cms"]}}) == [
        "atlas",
        "cms",
    ]
    assert "gridhub.hub.tokenfile=True" in " ".join(c.Spawner.args)
    assert "GRIDHUB_TOKEN_SERVICE_URL" in c.Spawner.environment
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "admin:auth_state" in roles["gridhub-tokens"]["scopes"]


SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=dask-gateway",
]


def test_server_token_may_use_the_gateway_in_every_mode(tmp_path, monkeypatch):
    """dask-gateway's JupyterHubAuthenticator refuses a token without
    access:services!service=dask-gateway: every server's token has it."""
    offline_discovery(monkeypatch)
    iam = {
        "GRIDHUB_IAM_ISSUER": "https://iam.example.org",
        "GRIDHUB_IAM_CLIENT_ID": "gridhub",
        "GRIDHUB_IAM_CLIENT_SECRET": "s3cret",
    }
    for i, env in enumerate(
        [{}, {"GRIDHUB_SPAWNER": "local"}, iam, {**iam, "GRIDHUB_SPAWNER": "local"}]
    ):
        c = build(env, tmp_path / str(i))
        extra = ["custom:gridhub-tokens:read!user"] if env.get("GRIDHUB_IAM_ISSUER") else []
        assert c.Spawner.server_token_scopes == SERVER_TOKEN_SCOPES + extra, env
        # the scope names a service the hub registers, and users hold it
        assert "dask-gateway" in {s["name"] for s in c.JupyterHub.services}
        user = {r["name"]: r for r in c.JupyterHub.load_roles}["user"]
        assert "access:services!service=dask-gateway" in user["scopes"]


def test_clusters_stop_with_the_server_by_default(tmp_path):
    from gridhub.hub.clusters import StopClustersWithServer

    c = build({"GRIDHUB_GATEWAY_URL": "http://gateway:8000/"}, tmp_path / "on")
    hook = c.Spawner.post_stop_hook
    assert isinstance(hook, StopClustersWithServer)
    assert hook.api_url == "http://gateway:8000/api/v1"
    assert hook.scope == "access:services!service=dask-gateway"

    c = build({"GRIDHUB_GATEWAY_STOP_CLUSTERS_WITH_SERVER": "false"}, tmp_path / "off")
    assert "post_stop_hook" not in c.Spawner


def test_misspelled_stop_clusters_setting_is_named(tmp_path):
    import pytest
    from gridhub.hub.settings import SettingsError

    with pytest.raises(SettingsError, match="GRIDHUB_GATEWAY_STOP_CLUSTERS_WITH_SERVER"):
        build({"GRIDHUB_GATEWAY_STOP_CLUSTER_WITH_SERVER": "false"}, tmp_path)


def test_http_timeout_is_the_start_timeout(tmp_path):
    """A server that has not answered within http_timeout is killed: on a busy host
    (fifty students at once) it must have the whole start timeout, not 60 s."""
    c = build({}, tmp_path / "default")
    assert c.Spawner.start_timeout == c.Spawner.http_timeout == 120
    c = build({"GRIDHUB_START_TIMEOUT": "300", "GRIDHUB_SPAWNER": "local"}, tmp_path / "set")
    assert c.Spawner.start_timeout == c.Spawner.http_timeout == 300


def test_local_kernels_use_ipc_in_a_short_runtime_dir(tmp_path):
    """Fifty kernels picking free loopback ports at once collide: local servers run
    their kernels on unix sockets, in a runtime dir short enough for a socket path."""
    from gridhub.hub.spawners import RuntimeDir

    c = build({"GRIDHUB_SPAWNER": "local"}, tmp_path / "local")
    assert "--KernelManager.transport=ipc" in c.Spawner.args
    runtime = c.Spawner.environment["JUPYTER_RUNTIME_DIR"]
    assert isinstance(runtime, RuntimeDir) and runtime.root == "/tmp/gridhub-runtime"  # noqa: S108
    # containers have a network namespace each: nothing to change
    c = build({}, tmp_path / "docker")
    assert "--KernelManager.transport=ipc" not in _list_or_empty(c.Spawner, "args")
    assert "JUPYTER_RUNTIME_DIR" not in c.Spawner.environment


def _list_or_empty(section, name) -> list:
    return list(section[name]) if name in section else []


def test_runtime_dir_fits_a_socket_path_and_is_private(tmp_path):
    import os
    import stat

    import pytest
    from gridhub.hub.settings import RUNTIME_ROOT_MAX
    from gridhub.hub.spawners import make_runtime_dir, runtime_dir_name

    root = tmp_path / "rt"
    uid, gid = os.geteuid(), os.getegid()
    path = make_runtime_dir(str(root), "alice", uid, gid)
    assert path == str(root / "alice")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert make_runtime_dir(str(root), "alice", uid, gid) == path  # again: the same dir
    # a dir left by another account's server is emptied before it is handed over
    Path(path, "jupyter_cookie_secret").write_text("old")
    os.chown(path, 65534, 65534)
    assert make_runtime_dir(str(root), "alice", uid, gid) == path
    assert os.listdir(path) == [] and os.stat(path).st_uid == uid
    Path(path, "kept").write_text("same account")
    make_runtime_dir(str(root), "alice", uid, gid)
    assert os.listdir(path) == ["kept"]
    # a long or odd name gets a hash; the longest socket path fits in 107 bytes
    long = runtime_dir_name("x" * 80 + "@example.org")
    assert len(long) == 32 and "/" not in runtime_dir_name("../etc")
    socket = f"{'r' * RUNTIME_ROOT_MAX}/{long}/kernel-{'u' * 36}-ipc-999"
    assert len(socket) <= 107
    # a root others may write into is refused, by name
    root.chmod(0o777)
    with pytest.raises(RuntimeError, match=r"local_runtime_root .* writable by nobody else"):
        make_runtime_dir(str(root), "bob", uid, gid)


def test_long_runtime_root_is_refused_by_name(tmp_path):
    import pytest
    from gridhub.hub.settings import SettingsError

    with pytest.raises(SettingsError, match=r"GRIDHUB_LOCAL_RUNTIME_ROOT.*107-byte"):
        build({"GRIDHUB_LOCAL_RUNTIME_ROOT": "/var/lib/gridhub/runtime-dirs"}, tmp_path)
    with pytest.raises(SettingsError, match=r"GRIDHUB_LOCAL_RUNTIME_ROOT.*absolute"):
        build({"GRIDHUB_LOCAL_RUNTIME_ROOT": "rt"}, tmp_path)


def test_masterclass_pool_is_a_seat_authenticator_and_a_service(tmp_path):
    c = build({"GRIDHUB_MASTERCLASS_POOL_SIZE": "30"}, tmp_path / "on")
    assert c.JupyterHub.authenticator_class == "gridhub.hub.students.MasterclassAuthenticator"
    a = c.MasterclassAuthenticator
    assert a.pool_size == 30
    assert a.students_file == str(tmp_path / "on/state/masterclass-seats.json")
    pool = {s["name"]: s for s in c.JupyterHub.services}["gridhub-pool"]
    assert "--size=30" in pool["command"] and "--concurrency=5" in pool["command"]
    assert "--class-size=60" in pool["command"]
    role = {r["name"]: r for r in c.JupyterHub.load_roles}["gridhub-pool"]
    assert {"admin:users", "servers"} <= set(role["scopes"])
    # off by default: no service, the same authenticator without seats
    c = build({}, tmp_path / "off")
    assert c.JupyterHub.authenticator_class == "gridhub.hub.students.MasterclassAuthenticator"
    assert c.MasterclassAuthenticator.pool_size == 0
    assert "gridhub-pool" not in {s["name"] for s in c.JupyterHub.services}


def test_masterclass_limits(tmp_path):
    c = build(
        {
            "GRIDHUB_MASTERCLASS_CLASS_SIZE": "25",
            "GRIDHUB_MASTERCLASS_POOL_SIZE": "10",
            "GRIDHUB_MASTERCLASS_TEACHERS": "teacher",
            "GRIDHUB_MASTERCLASS_FAILED_LOGIN_LIMIT": "7",
            "GRIDHUB_MASTERCLASS_FAILED_LOGIN_WINDOW": "120",
        },
        tmp_path,
    )
    a = c.MasterclassAuthenticator
    assert (a.class_size, a.failed_login_limit, a.failed_login_window) == (25, 7, 120)
    # JupyterHub's own limit behind it: students, free seats, teachers
    assert c.JupyterHub.active_server_limit == 25 + 10 + 1


def test_bad_pool_settings_are_named(tmp_path):
    import pytest
    from gridhub.hub.settings import SettingsError

    with pytest.raises(SettingsError, match="GRIDHUB_MASTERCLASS_POOL_SIZE"):
        build({"GRIDHUB_MASTERCLASS_POOL_SIZE": "-1"}, tmp_path / "a")
    with pytest.raises(SettingsError, match="GRIDHUB_MASTERCLASS_POOL_CONCURRENCY"):
        build({"GRIDHUB_MASTERCLASS_POOL_CONCURRENCY": "0"}, tmp_path / "b")
    with pytest.raises(SettingsError, match="masterclass_pool_size is for masterclass mode"):
        build(
            {
                "GRIDHUB_MASTERCLASS_POOL_SIZE": "5",
                "GRIDHUB_IAM_ISSUER": "https://iam.example.org",
                "GRIDHUB_IAM_CLIENT_ID": "gridhub",
            },
            tmp_path / "c",
        )
    with pytest.raises(SettingsError, match="larger than masterclass_class_size"):
        build({"GRIDHUB_MASTERCLASS_POOL_SIZE": "61"}, tmp_path / "d")


def test_masterclass_warm_kernel_teacher_view_and_culler(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "02-b.ipynb").write_text("{}")
    (nbs / "01-a.ipynb").write_text("{}")
    env = {"GRIDHUB_MASTERCLASS_NOTEBOOKS_DIR": str(nbs), "GRIDHUB_SPAWNER": "local"}
    c = build({**env, "GRIDHUB_MASTERCLASS_POOL_SIZE": "3"}, tmp_path / "a")
    # the first class notebook's kernel starts with every server
    assert c.Spawner.environment["GRIDHUB_WARM_NOTEBOOK"] == "01-a.ipynb"
    assert "--ServerApp.jpserver_extensions=gridhub.hub.warmkernel=True" in c.Spawner.args
    # the culler sees only who logged in (group "class"), not the free seats
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert all(s.endswith("!group=class") for s in roles["idle-culler"]["scopes"])
    assert c.MasterclassAuthenticator.manage_groups is True
    # the teacher's view: a service whose token reads users, servers, routes and servers' API
    teacher = {s["name"]: s for s in c.JupyterHub.services}["teacher"]
    assert teacher["url"].endswith(":10102") and "gridhub.hub.teacher" in teacher["command"]
    assert set(roles["teacher"]["scopes"]) == {
        "list:users", "read:users", "read:servers", "proxy", "access:servers"
    }  # fmt: skip
    # students do not hold access to it (the default user role)
    assert not any("service=teacher" in s for s in roles["user"]["scopes"])
    # off: no warm kernel; without a pool the culler sees everyone
    c = build({**env, "GRIDHUB_MASTERCLASS_WARM_NOTEBOOK": "none"}, tmp_path / "b")
    assert "GRIDHUB_WARM_NOTEBOOK" not in c.Spawner.environment
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "list:users" in roles["idle-culler"]["scopes"]


def test_warm_kernel_imports():
    from gridhub.hub.warmkernel import imported_modules, warm_code

    nb = {
        "cells": [
            {"cell_type": "markdown", "source": "import nothing"},
            {"cell_type": "code", "source": ["import os\n", "from gridhub import data\n",
                                             "%matplotlib inline\n", "x = 1"]},
            {"cell_type": "code", "source": "import numpy as np, awkward\nif x:\n    import no"},
            {"cell_type": "code", "source": "from . import rel\nfrom os import *\nimport os"},
            {"cell_type": "code", "source": "this is not python("},
        ]
    }  # fmt: skip
    mods = imported_modules(nb)
    assert mods == ["os", "gridhub", "gridhub.data", "numpy", "awkward"]
    ns: dict = {}
    exec(warm_code(["json", "no_such_module_here"]), ns)  # noqa: S102 (our own code)
    assert set(ns) == {"__builtins__"}  # nothing bound in the user's namespace


def test_local_cluster_dashboards_go_through_the_users_server(tmp_path, monkeypatch):
    """Every user server (docker or local) gets the jupyter-server-proxy link,
    and Dask's own formatting turns it into the server's proxy path."""
    import dask
    from distributed.utils import format_dashboard_link

    for env in ({}, {"GRIDHUB_SPAWNER": "local"}):
        link = build(env, tmp_path).Spawner.environment["DASK_DISTRIBUTED__DASHBOARD__LINK"]
        assert link == "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
    # as the server's kernel sees it: the variable in its environment, read by Dask's config
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.setenv("DASK_DISTRIBUTED__DASHBOARD__LINK", link)
    dask.config.refresh()
    try:
        assert format_dashboard_link("127.0.0.1", 8787) == "/user/alice/proxy/8787/status"
    finally:
        monkeypatch.delenv("DASK_DISTRIBUTED__DASHBOARD__LINK")
        dask.config.refresh()


def test_hub_database_commits_do_not_wait_for_the_disk(tmp_path):
    """WAL, synced at checkpoints (gridhub.hub.config.sqlite_without_sync_per_commit):
    JupyterHub's own session factory, as the hub makes it from the config."""
    from jupyterhub.orm import new_session_factory

    c = build({}, tmp_path)
    (tmp_path / "state").mkdir(exist_ok=True)
    db = new_session_factory(c.JupyterHub.db_url)()
    try:
        mode = db.connection().exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = db.connection().exec_driver_sql("PRAGMA synchronous").scalar()
    finally:
        db.close()
    assert (mode, sync) == ("wal", 1)  # 1: NORMAL (2: FULL, the default)


def test_the_class_is_no_shared_area_of_the_analysis_cache(tmp_path, monkeypatch):
    """Masterclass: the storage-token issuer leaves the class group out of the
    analysis cache's shared areas (every student is in it); IAM groups keep theirs."""

    def storage_cmd(env: dict[str, str]) -> list[str]:
        c = build({"GRIDHUB_LAKE_URL": "root://lake-cache:1094", **env}, tmp_path)
        (service,) = [x for x in c.JupyterHub.services if x["name"] == "gridhub-storage"]
        return service["command"]

    assert "--no-area-group=class" in storage_cmd({})
    iam = {"GRIDHUB_IAM_ISSUER": "https://iam.example.org", "GRIDHUB_IAM_CLIENT_ID": "gridhub"}
    offline_discovery(monkeypatch)
    assert not [a for a in storage_cmd(iam) if a.startswith("--no-area-group")]
