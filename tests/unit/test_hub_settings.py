"""Unit tests of the hub's settings schema and secrets."""

from __future__ import annotations

import stat

import pytest
from gridhub.hub.homecopy import copy_once
from gridhub.hub.secrets import load_or_create, load_secrets
from gridhub.hub.settings import Settings, SettingsError, describe, load_settings


def test_defaults_are_masterclass():
    s = load_settings({})
    assert s.mode == "masterclass"
    assert s.spawner == "docker"


def test_env_lists_and_iam_mode():
    s = load_settings(
        {
            "GRIDHUB_IAM_ISSUER": "https://iam.example.org/",
            "GRIDHUB_IAM_CLIENT_ID": "gridhub",
            "GRIDHUB_IAM_ALLOWED_GROUPS": "atlas, cms",
            "GRIDHUB_IAM_EXTRA_SCOPES": "wlcg.groups",
            "OTHER": "ignored",
        }
    )
    assert s.mode == "iam"
    assert s.iam_issuer == "https://iam.example.org"
    assert s.iam_allowed_groups == ["atlas", "cms"]
    assert s.iam_extra_scopes == ["wlcg.groups"]


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(SettingsError, match=r"GRIDHUB_IAM_ISUER.*did you mean GRIDHUB_IAM_ISSUER"):
        load_settings({"GRIDHUB_IAM_ISUER": "https://x"})
    f = tmp_path / "c.yaml"
    f.write_text("notebook_imag: x\n")
    with pytest.raises(SettingsError, match=r"notebook_imag.*did you mean notebook_image"):
        load_settings({"GRIDHUB_CONFIG_FILE": str(f)})


def test_invalid_values_name_the_key():
    with pytest.raises(SettingsError, match="GRIDHUB_SPAWNER"):
        load_settings({"GRIDHUB_SPAWNER": "kubernetes"})
    with pytest.raises(SettingsError, match="iam_client_id is required"):
        load_settings({"GRIDHUB_IAM_ISSUER": "https://iam.example.org"})
    with pytest.raises(SettingsError, match="GRIDHUB_MASTERCLASS_ACCESS_CODE"):
        load_settings({"GRIDHUB_MASTERCLASS_ACCESS_CODE": "short"})


def test_env_overrides_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("facility_name: From YAML\ncpu_limit: 1\n")
    s = load_settings({"GRIDHUB_CONFIG_FILE": str(f), "GRIDHUB_FACILITY_NAME": "From env"})
    assert s.facility_name == "From env" and s.cpu_limit == 1


def test_every_key_documented():
    for name, field in Settings.model_fields.items():
        assert field.description, name
    assert "GRIDHUB_FACILITY_NAME" in describe()


def test_secrets_generated_once_private(tmp_path):
    state = tmp_path / "state"
    first = load_secrets(Settings(state_dir=state))
    second = load_secrets(Settings(state_dir=state))
    assert first == second
    assert "hidden" in repr(first) and first.cookie_secret not in repr(first)
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    for f in (state / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert len(bytes.fromhex(first.crypt_key)) == 32
    assert len(first.masterclass_access_code) >= 8


def test_configured_secret_wins(tmp_path):
    assert load_or_create(tmp_path, "x", "given") == "given"
    assert not (tmp_path / "secrets" / "x").exists()


def test_notebooks_copied_once(tmp_path):
    src, home = tmp_path / "src", tmp_path / "home"
    (src / "sub").mkdir(parents=True)
    (src / "a.ipynb").write_text("orig")
    (src / "sub" / "b.txt").write_text("orig")
    (src / ".hidden").write_text("x")
    home.mkdir()
    (home / "a.ipynb").write_text("student's")
    assert copy_once("masterclass", src, home) == ["sub/b.txt"]
    assert (home / "a.ipynb").read_text() == "student's"
    (home / "sub" / "b.txt").unlink()
    assert copy_once("masterclass", src, home) == []
    assert not (home / "sub" / "b.txt").exists()


def test_docs_list_every_key():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "hub.md").read_text()
    missing = [n for n in Settings.model_fields if f"`GRIDHUB_{n.upper()}`" not in docs]
    assert not missing, f"docs/hub.md lacks {missing}: regenerate its table from describe()"


@pytest.mark.parametrize("value", ["not-hex-at-all", "abc", "zz" * 32])
def test_cookie_secret_must_be_hex(value):
    with pytest.raises(SettingsError, match=r"GRIDHUB_COOKIE_SECRET.*hex") as err:
        load_settings({"GRIDHUB_COOKIE_SECRET": value})
    assert value not in str(err.value)  # a secret, even a bad one, is not echoed


def test_a_hex_cookie_secret_is_accepted():
    s = load_settings({"GRIDHUB_COOKIE_SECRET": "ab" * 32})
    assert s.cookie_secret.get_secret_value() == "ab" * 32
