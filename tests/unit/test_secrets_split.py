"""Each service keeps its own secrets (issue 15): only what services share
lives in the shared directory; an older shared volume gives the hub's own back."""

from __future__ import annotations

from gridhub import init as gridhub_init
from gridhub.hub import secrets


def test_only_shared_secrets_go_to_the_shared_directory(tmp_path, monkeypatch) -> None:
    state, shared = tmp_path / "state", tmp_path / "shared"
    monkeypatch.setenv("FACILITY_SHARED_SECRETS", str(shared))
    token = secrets.load_or_create(state, "gateway_api_token")
    cookie = secrets.load_or_create(state, "cookie_secret")
    assert (shared / "gateway_api_token").read_text().strip() == token
    assert (state / "secrets" / "cookie_secret").read_text().strip() == cookie
    assert not (shared / "cookie_secret").exists()
    assert not (state / "secrets" / "gateway_api_token").exists()


def test_without_a_shared_directory_everything_stays_in_the_state(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FACILITY_SHARED_SECRETS", raising=False)
    secrets.load_or_create(tmp_path, "gateway_api_token")
    assert (tmp_path / "secrets" / "gateway_api_token").exists()


def test_an_old_shared_volume_gives_the_hub_its_secrets_back(tmp_path, monkeypatch) -> None:
    state, shared = tmp_path / "state", tmp_path / "shared"
    shared.mkdir()
    (shared / "cookie_secret").write_text("old-cookie\n")
    (shared / "masterclass_access_code").write_text("abcd-efgh-jkmn\n")
    (shared / "gateway_api_token").write_text("shared-token\n")
    monkeypatch.setenv("FACILITY_SHARED_SECRETS", str(shared))
    gridhub_init._take_own_secrets_back(state)
    # kept (sessions and the class's code survive the upgrade), and moved
    assert secrets.load_or_create(state, "cookie_secret") == "old-cookie"
    assert secrets.load_or_create(state, "masterclass_access_code") == "abcd-efgh-jkmn"
    assert not (shared / "cookie_secret").exists()
    assert not (shared / "masterclass_access_code").exists()
    assert (state / "secrets" / "cookie_secret").stat().st_mode & 0o777 == 0o600
    # what services share stays
    assert secrets.load_or_create(state, "gateway_api_token") == "shared-token"
