"""The hub's traitlets Config as hub_config/jupyterhub_config.py builds it,
for the unit tests of what the settings make of the hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridhub.hub import auth as hub_auth
from gridhub.hub.config import apply_defaults, apply_settings
from gridhub.hub.secrets import load_secrets
from gridhub.hub.settings import load_settings
from traitlets.config import Config

HUB_CONFIG = Path(__file__).resolve().parents[2] / "hub_config"


def build(env: dict[str, str], tmp_path: Path, config_dir: Path = HUB_CONFIG) -> Config:
    """The Config of settings ``env``, with the hub's state in ``tmp_path``/state."""
    settings = load_settings({"GRIDHUB_STATE_DIR": str(tmp_path / "state"), **env})
    c = Config()
    apply_defaults(c)
    apply_settings(c, settings, load_secrets(settings), config_dir)
    return c


def offline_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """The IAM issuer's OIDC discovery answered without a network."""
    monkeypatch.setattr(
        hub_auth,
        "discover",
        lambda issuer: {
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "userinfo_endpoint": issuer + "/userinfo",
        },
    )
