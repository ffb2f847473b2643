"""docker-compose.yml (+ .override.yml) and .env.example against the settings schema: every
setting an operator can use in the compose facility reaches the containers and
is documented, so a key set in .env is never silently dropped."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from gridhub.hub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Settings that have no meaning in the compose facility: the local spawner's,
# the hub-started Traefik's, the token service's port and paths fixed by the
# images' layout.
NOT_FOR_COMPOSE = {
    "local_home_root",
    "local_python",
    "local_runtime_root",
    "local_unix_user",
    "masterclass_notebooks_dir",
    "state_dir",
    "token_service_port",
    "traefik_bin",
    "traefik_dynamic_config_file",
}


def compose_environment() -> dict[str, dict[str, str]]:
    """Each service's environment as compose merges docker-compose.yml and the
    embedded DIRAC's docker-compose.override.yml."""
    out: dict[str, dict[str, str]] = {}
    for name in ("docker-compose.yml", "docker-compose.override.yml"):
        services = yaml.safe_load((ROOT / name).read_text())["services"]
        for service, svc in services.items():
            out.setdefault(service, {}).update(svc.get("environment") or {})
    return out


def test_every_setting_reaches_a_container_and_only_settings_do():
    forwarded = {
        key.removeprefix("GRIDHUB_").lower()
        for env in compose_environment().values()
        for key in env
        if key.startswith("GRIDHUB_")
    }
    fields = set(Settings.model_fields)
    assert not forwarded - fields, "GRIDHUB_* keys in docker-compose.yml that are no setting"
    assert fields - NOT_FOR_COMPOSE - forwarded == set(), "settings compose does not pass on"


def test_every_setting_taken_from_env_is_in_env_example():
    text = (ROOT / ".env.example").read_text()
    example = set(re.findall(r"^#?(GRIDHUB_[A-Z0-9_]+)=", text, re.M))
    from_env = {
        key
        for env in compose_environment().values()
        for key, value in env.items()
        if key.startswith("GRIDHUB_") and f"${{{key}" in str(value)
    }
    assert from_env - example == set(), "settings compose reads from .env but .env.example lacks"


def test_ansible_spec_names_only_settings():
    """The role writes each key of gridhub_facility_settings/_secrets as
    GRIDHUB_<KEY> into the facility's .env: a key that is no setting would
    stop the hub and the gateway at start."""
    spec = yaml.safe_load(
        (ROOT / "ansible/roles/gridhub_facility/meta/argument_specs.yml").read_text()
    )["argument_specs"]["main"]["options"]
    keys = set(spec["gridhub_facility_settings"]["options"])
    keys |= set(spec["gridhub_facility_secrets"]["options"])
    assert keys - set(Settings.model_fields) == set(), "Ansible spec keys that are no setting"
    assert "direct_peers_off" in keys


def test_schedulers_workers_and_notebooks_run_one_image():
    """A scheduler unpickles what a notebook sends and hands it to workers: the
    three run the notebook image, so their versions always match."""
    env = compose_environment()
    notebook = "${GRIDHUB_NOTEBOOK_IMAGE:-gridhub/notebook:latest}"
    assert env["gateway"]["FACILITY_SCHEDULER_IMAGE"] == notebook
    assert env["hub"]["GRIDHUB_NOTEBOOK_IMAGE"] == notebook
    assert env["localsite"]["FACILITY_JOB_IMAGE"] == notebook
