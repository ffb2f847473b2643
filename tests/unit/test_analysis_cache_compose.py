"""The analysis cache's store in the compose facility (docs/data-lake.md):
the setting that names it, what notebook servers get (its URL, its
certificate read-only as the XRootD client's CA directory), and the
lake-store service's least privilege in docker-compose.yml."""

from __future__ import annotations

import os

import pytest
import yaml
from gridhub.hub.settings import SettingsError, load_settings
from hub_build import HUB_CONFIG, build

ROOT = HUB_CONFIG.parent
LAKE = {"GRIDHUB_LAKE_URL": "root://lake-cache:1094"}


def test_notebooks_get_the_store_url_only_with_a_lake(tmp_path):
    c = build({**LAKE, "GRIDHUB_ANALYSIS_CACHE_URL": "root://lake-store:1094/"}, tmp_path)
    assert c.Spawner.environment["GRIDHUB_ANALYSIS_CACHE_URL"] == "root://lake-store:1094"
    assert "GRIDHUB_ANALYSIS_CACHE_URL" not in build(LAKE, tmp_path).Spawner.environment
    with pytest.raises(SettingsError, match="analysis_cache_url is set without lake_url"):
        load_settings({"GRIDHUB_ANALYSIS_CACHE_URL": "root://lake-store:1094"})
    with pytest.raises(SettingsError, match=r"GRIDHUB_ANALYSIS_CACHE_URL.*root://"):
        load_settings({**LAKE, "GRIDHUB_ANALYSIS_CACHE_URL": "https://lake-store"})


def _compose_glue(monkeypatch, tmp_path, env: dict[str, str]):
    from traitlets.config.loader import PyFileConfigLoader

    for key in [k for k in os.environ if k.startswith(("GRIDHUB_", "FACILITY_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GRIDHUB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GRIDHUB_EXTRA_CONFIG_DIR", str(ROOT / "images/hub/jupyterhub_config.d"))
    monkeypatch.setenv("FACILITY_PROJECT", "gridhubunit")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(HUB_CONFIG)).load_config()


def test_compose_notebooks_trust_the_store_read_only(tmp_path, monkeypatch):
    c = _compose_glue(
        monkeypatch, tmp_path, {**LAKE, "GRIDHUB_ANALYSIS_CACHE_URL": "root://lake-store:1094"}
    )
    volume = c.DockerSpawner.volumes["gridhubunit_lake-store-ca"]
    assert volume == {"bind": "/etc/gridhub/lake-store-ca", "mode": "ro"}
    env = c.Spawner.environment
    assert env["X509_CERT_DIR"] == "/etc/gridhub/lake-store-ca"
    assert env["GRIDHUB_ANALYSIS_CACHE_URL"] == "root://lake-store:1094"
    # a store elsewhere: not this facility's certificate
    c = _compose_glue(
        monkeypatch, tmp_path, {**LAKE, "GRIDHUB_ANALYSIS_CACHE_URL": "root://store.example:1094"}
    )
    assert "gridhubunit_lake-store-ca" not in c.DockerSpawner.volumes
    assert "X509_CERT_DIR" not in c.Spawner.environment


def test_the_store_service_holds_only_what_it_needs():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    store = compose["services"]["lake-store"]
    assert store["command"] == ["store"] and store["read_only"] is True
    # notebooks reach it on users; so does it the issuer's keys (Traefik's alias there)
    assert store["networks"] == ["users"]
    assert store["environment"]["LAKE_ISSUER"].endswith("/services/gridhub-storage")
    mounts = {v.split(":")[0]: v for v in store["volumes"]}
    assert set(mounts) == {"lake-store", "lake-store-tls", "lake-store-ca", "certs"}
    assert mounts["certs"].endswith(":ro")
    # no other service holds its key or its objects; the hub passes the URL on
    for name, svc in compose["services"].items():
        if name != "lake-store":
            held = {str(v).split(":")[0] for v in svc.get("volumes") or []}
            assert not held & {"lake-store", "lake-store-tls", "lake-store-ca"}, name
    hub = compose["services"]["hub"]["environment"]
    assert hub["GRIDHUB_ANALYSIS_CACHE_URL"].endswith(":-root://lake-store:1094}")
