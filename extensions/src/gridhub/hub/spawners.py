"""Spawners for the local (process) mode."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import stat

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import Unicode

from .settings import RUNTIME_USER_DIR_MAX


class SharedAccountSpawner(LocalProcessSpawner):
    """Run every user's server as one unprivileged unix account, each in its own home.

    For single-machine demos and the process-level tests, where creating a unix account
    per hub user is not wanted.  Users are separated by the hub and proxy (each server
    only accepts its owner's tokens), not by the kernel; production uses DockerSpawner.
    """

    unix_user = Unicode(config=True, help="The unix account all servers run as.")
    home_root = Unicode(config=True, help="Parent directory of the per-user homes.")

    @property
    def home_dir(self) -> str:
        return os.path.join(self.home_root, self.user.name)

    @property
    def account(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.unix_user)

    def user_env(self, env):
        pw = self.account
        env["USER"] = env["LOGNAME"] = pw.pw_name
        env["HOME"] = self.home_dir
        env["SHELL"] = pw.pw_shell or "/bin/sh"
        return env

    def make_preexec_fn(self, name):
        setuid = set_user_setuid(self.unix_user, chdir=False)
        home = self.home_dir

        def preexec():
            setuid()
            os.chdir(home)

        return preexec

    def ensure_home(self) -> str:
        pw = self.account
        os.makedirs(self.home_root, mode=0o755, exist_ok=True)
        if not os.path.isdir(self.home_dir):
            os.mkdir(self.home_dir, 0o700)
            os.chown(self.home_dir, pw.pw_uid, pw.pw_gid)
        return self.home_dir

    async def start(self):
        self.ensure_home()
        return await super().start()


def unix_home_and_ids(spawner) -> tuple[str, int, int] | None:
    """(home, uid, gid) of a local spawner's server, None for other spawners."""
    if isinstance(spawner, SharedAccountSpawner):
        pw = spawner.account
        return spawner.ensure_home(), pw.pw_uid, pw.pw_gid
    if isinstance(spawner, LocalProcessSpawner):
        pw = pwd.getpwnam(spawner.user.name)
        return pw.pw_dir, pw.pw_uid, pw.pw_gid
    return None


def runtime_dir_name(username: str) -> str:
    """A user's directory under local_runtime_root: the name if short and plain, else a hash."""
    if re.fullmatch(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{RUNTIME_USER_DIR_MAX - 1}}}", username):
        return username
    return hashlib.sha256(username.encode()).hexdigest()[:RUNTIME_USER_DIR_MAX]


def make_runtime_dir(root: str, username: str, uid: int, gid: int) -> str:
    """Create (as the hub) and return a server's JUPYTER_RUNTIME_DIR under ``root``.

    Kernels bind their ipc sockets there; a unix socket path is limited to 107 bytes,
    which the default (under the home) passes for long homes. ``root`` belongs to the
    hub's account and nobody else may write it, so no one else can plant the directory.
    """
    os.makedirs(root, mode=0o755, exist_ok=True)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(
            f"local_runtime_root {root} must be a directory owned by the hub's account"
            " and writable by nobody else"
        )
    path = os.path.join(root, runtime_dir_name(username))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeError(f"{path} is not a directory") from None
        if st.st_uid != uid:
            # left by a server of another account (the spawner's account changed):
            # its files (cookie secret, connection files) are neither readable by
            # nor meant for this one; start empty
            shutil.rmtree(path)
            os.mkdir(path, 0o700)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)
    return path


class RuntimeDir:
    """Spawner.environment value: the server's short JUPYTER_RUNTIME_DIR (local mode)."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, spawner) -> str:
        info = unix_home_and_ids(spawner)
        if info is None:
            raise RuntimeError("JUPYTER_RUNTIME_DIR is set only for local spawners")
        _, uid, gid = info
        return make_runtime_dir(self.root, spawner.user.name, uid, gid)
