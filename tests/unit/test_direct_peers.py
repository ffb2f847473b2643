"""Direct peers' decisions without processes: when it is off, one decision
per peer, kept (failures too), not kept when it could not be made, and not
lost when the caller gives up first; the deployer's switch reaches every
grid job from the facility's settings."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from gridhub.gateway.backend import DiracBackend, DiracClusterConfig
from gridhub.hub.settings import SettingsError, load_settings
from gridhub.tunnel.direct_peers import off_reason
from gridhub.tunnel.peer_choice import Choice, PeerChoices
from gridhub.tunnel.worker import parse_args, worker_command


@pytest.mark.parametrize(
    ("site", "off", "why"),
    [
        ("", "", "no site name (DIRACSITE)"),
        ("UNKNOWN", "", "no site name (DIRACSITE)"),
        ("LCG.A.ch", "", None),
        ("LCG.A.ch", "LCG.B.ch", None),
        ("LCG.A.ch", "LCG.B.ch, LCG.A.ch", "switched off for LCG.A.ch (GRIDHUB_DIRECT_PEERS_OFF)"),
        ("LCG.A.ch", "*", "switched off for LCG.A.ch (GRIDHUB_DIRECT_PEERS_OFF)"),
        ("LCG.A.ch", "LCG.A", None),
    ],
)
def test_off_reason(site: str, off: str, why: str | None):
    assert off_reason(site, off) == why


def _job_env(monkeypatch, tmp_path, off: str | None) -> dict[str, str]:
    """A grid job's environment from the gateway's config file, as the
    compose facility loads it, with GRIDHUB_DIRECT_PEERS_OFF set or not."""
    from traitlets.config.loader import PyFileConfigLoader

    for key in [k for k in os.environ if k.startswith("GRIDHUB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GRIDHUB_STATE_DIR", str(tmp_path))
    if off is not None:
        monkeypatch.setenv("GRIDHUB_DIRECT_PEERS_OFF", off)
    config_dir = Path(__file__).resolve().parents[2] / "hub_config"
    config = PyFileConfigLoader("dask_gateway_config.py", path=str(config_dir)).load_config()
    backend = DiracBackend(config=config)
    cluster = SimpleNamespace(
        name="c0ffee",
        username="alice",
        token="t",  # noqa: S106  (a test value)
        config=DiracClusterConfig(),
        state={},
    )
    return backend.worker_env(cluster)


def test_the_deployer_setting_reaches_every_grid_job(monkeypatch, tmp_path):
    env = _job_env(monkeypatch, tmp_path, "LCG.A.ch LCG.B.ch")
    assert env["GRIDHUB_DIRECT_PEERS_OFF"] == "LCG.A.ch,LCG.B.ch"
    assert off_reason("LCG.B.ch", env["GRIDHUB_DIRECT_PEERS_OFF"]), env
    assert off_reason("LCG.C.ch", env["GRIDHUB_DIRECT_PEERS_OFF"]) is None
    assert _job_env(monkeypatch, tmp_path, "*")["GRIDHUB_DIRECT_PEERS_OFF"] == "*"
    assert "GRIDHUB_DIRECT_PEERS_OFF" not in _job_env(monkeypatch, tmp_path, None)


def test_the_deployer_setting_refuses_what_is_no_site_name():
    with pytest.raises(SettingsError, match=r"GRIDHUB_DIRECT_PEERS_OFF.*LCG\.A\.ch;LCG\.B\.ch"):
        load_settings({"GRIDHUB_DIRECT_PEERS_OFF": "LCG.A.ch;LCG.B.ch"})


class Decider:
    """Counts decisions; each takes ``delay`` s and returns ``choice``."""

    def __init__(self, choice: Choice | Exception, delay: float = 0.0):
        self.choice, self.delay, self.calls = choice, delay, 0

    async def __call__(self) -> Choice:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if isinstance(self.choice, Exception):
            raise self.choice
        return self.choice


async def test_one_decision_for_concurrent_connects():
    choices, decide = PeerChoices(), Decider(Choice("tls://10.0.0.2:1", "same site"), 0.05)
    got = await asyncio.gather(*(choices.get("p", decide) for _ in range(5)))
    assert decide.calls == 1 and {c.direct for c in got} == {"tls://10.0.0.2:1"}
    assert choices.stats["p"].path == "direct"


async def test_a_failed_direct_attempt_is_kept():
    choices = PeerChoices()
    failed = Decider(Choice(None, "direct tls://10.0.0.2:1 failed: timed out", failed=True))
    for _ in range(3):
        assert (await choices.get("p", failed)).direct is None
    assert failed.calls == 1 and choices.stats["p"].failed_direct == 1


async def test_no_decision_is_not_kept():
    choices, broken = PeerChoices(), Decider(OSError("relay down"))
    for _ in range(2):
        choice = await choices.get("p", broken)
        assert choice.direct is None and "relay down" in choice.why
    assert broken.calls == 2 and "p" not in choices.known


async def test_a_caller_that_gives_up_does_not_cancel_the_decision():
    """distributed retries a connect in slices of its connect timeout: a
    slice ending mid-decision must not lose the decision (a timeout would
    otherwise be paid on every slice)."""
    choices = PeerChoices()
    slow = Decider(Choice(None, "direct x failed: timed out", failed=True), 0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(choices.get("p", slow), 0.05)
    assert (await choices.get("p", slow)).failed
    assert slow.calls == 1 and choices.known["p"].failed


async def test_fall_back_after_a_direct_path_broke():
    choices = PeerChoices()
    await choices.get("p", Decider(Choice("tls://10.0.0.2:1", "same site")))
    choices.fall_back("p", "direct tls://10.0.0.2:1 failed: refused")
    again = Decider(Choice("tls://10.0.0.2:1", "same site"))
    assert (await choices.get("p", again)).direct is None and again.calls == 0
    assert choices.stats["p"].path == "relay" and choices.stats["p"].failed_direct == 1


def test_grid_workers_get_the_direct_peers_preload():
    ns = parse_args(["--key", "k.pem", "--", "gateway://traefik:8786/c1", "--name", "w"])
    cmd = worker_command(ns, 4000, "c1-w-abc")
    i = cmd.index("--preload")
    assert cmd[i + 1] == "gridhub.tunnel.direct_peers"
    assert cmd[cmd.index("--listen-address") + 1] == "tls://127.0.0.1:4000"
    plain = worker_command(parse_args(["--no-reverse-path", "--", "tls://s:8786"]), None, None)
    assert "--preload" not in plain
