"""Spawners for the local (process) mode."""

from __future__ import annotations

import os
import pwd

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import Unicode


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
