"""Hub user names -> DIRAC user names, and the CS registration (issue 16)."""

import json
import re

import pytest
from gridhub.embedded import USER_GROUP, ensure_state, load_facility
from gridhub.embedded.users import (
    UserNameError,
    dirac_user_name,
    register_in_cs,
    user_sub,
)

SAFE = re.compile(r"[a-z][a-z0-9_]*(-[0-9a-f]{10})?")


@pytest.mark.parametrize("name", ["alice", "bob_2", "x" * 32])
def test_a_dirac_safe_name_is_its_own_dirac_name(name):
    assert dirac_user_name(name) == name


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("Bob.Smith@example.org", "bob_smith_example_org"),
        ("Alice", "alice"),
        ("élodie", "lodie"),
        ("1student", "u_1student"),
        ("a b/../c", "a_b_c"),
        ('eve"; Owner = "root', "eve_owner_root"),
        ("gridhub", "gridhub"),  # the facility's own name is never a hub user's
        ("x" * 33, "x" * 24),
        ("!!!", "u"),
    ],
)
def test_other_names_map_to_a_safe_stem_and_a_hash(name, stem):
    mapped = dirac_user_name(name)
    assert mapped != name
    assert SAFE.fullmatch(mapped), mapped
    assert mapped.rsplit("-", 1)[0] == stem
    assert dirac_user_name(name) == mapped  # stable


def test_names_that_differ_only_in_unsafe_characters_stay_apart():
    names = ["bob.smith", "bob_smith", "bob-smith", "Bob.Smith", "bob smith", "bob@smith"]
    assert len({dirac_user_name(n) for n in names}) == len(names)
    assert len({user_sub(n) for n in names}) == len(names)


@pytest.mark.parametrize(("name", "why"), [("", "empty"), ("a" * 256, "256 characters")])
def test_a_name_that_cannot_be_registered_is_refused_with_the_reason(name, why):
    with pytest.raises(UserNameError, match=why):
        dirac_user_name(name)


def test_registration_adds_the_user_to_a_normal_user_group_once(tmp_path):
    state = ensure_state(tmp_path / "state")
    fac = load_facility(state)
    from git import Repo

    commits = len(list(Repo(state / "cs").iter_commits()))
    name, changed = register_in_cs(state / "cs", fac, "Bob.Smith@example.org")
    assert changed and name == dirac_user_name("Bob.Smith@example.org")
    assert register_in_cs(state / "cs", fac, "Bob.Smith@example.org") == (
        name,
        False,
    )
    assert len(list(Repo(state / "cs").iter_commits())) == commits + 1

    from diracx.core.config.schema import Config

    cs = Config.model_validate(json.loads((state / "cs" / "default.yml").read_text()))
    registry = cs.registry[fac.vo]
    sub = registry.sub_from_preferred_username(name)
    assert sub == user_sub("Bob.Smith@example.org")
    assert sub in registry.groups[USER_GROUP].users
    assert {str(p) for p in registry.groups[USER_GROUP].properties} == {"NormalUser"}
    assert sub not in registry.groups[fac.group].users
    assert cs.operations[fac.vo].services.job_monitoring.global_jobs_info is False


def test_a_dirac_name_held_by_another_user_is_refused(tmp_path):
    state = ensure_state(tmp_path / "state")
    fac = load_facility(state)
    cs = state / "cs" / "default.yml"
    data = json.loads(cs.read_text())
    data["Registry"][fac.vo]["Users"]["someone-else"] = {"PreferedUsername": "carol"}
    cs.write_text(json.dumps(data))
    with pytest.raises(UserNameError, match="'carol' is already held by another user"):
        register_in_cs(state / "cs", fac, "carol")
