"""Hub groups -> DIRAC groups with the embedded DiracX, and what a group must
be for hub users to be put in it (issue 16, groups)."""

import json

import pytest
from gridhub.embedded import GROUP, ensure_state, load_facility
from gridhub.embedded.users import (
    CLASS_GROUP,
    USER_GROUP,
    GroupError,
    check_group,
    embedded_group,
    register_in_cs,
    user_sub,
)
from gridhub.hub.settings import SettingsError, load_settings
from traitlets import TraitError


def test_with_no_map_students_and_everyone_else_get_groups_of_their_own():
    assert embedded_group(["class"], {}) == CLASS_GROUP == "gridhub_class"
    assert embedded_group(["class", "staff"], {}) == CLASS_GROUP
    assert embedded_group(["staff"], {}) == USER_GROUP == "gridhub_analysis"
    assert embedded_group([], {}) == USER_GROUP


def test_the_deployers_map_is_the_one_setting_first_listed_group_wins():
    groups = {"higgs": "cms_higgs", "class": "school", "default": "cms_user"}
    assert embedded_group(["class", "higgs"], groups) == "cms_higgs"  # the map's order
    assert embedded_group(["class"], groups) == "school"
    assert embedded_group(["other"], groups) == "cms_user"
    # no "default": never DiracX's DefaultGroup (the facility's), the users' group
    assert embedded_group(["other"], {"higgs": "cms_higgs"}) == USER_GROUP


@pytest.mark.parametrize(
    ("group", "why"),
    [
        ("", "'' is not a DIRAC group name"),
        ("two words", "'two words' is not a DIRAC group name"),
        ("vo:gridhub", "'vo:gridhub' is not a DIRAC group name"),
        ("1st", "'1st' is not a DIRAC group name"),
        ("g" * 65, "'g{65}' is not a DIRAC group name"),
        (["a"], r"\['a'\] is not a DIRAC group name"),
        ("gridhub_user", "'gridhub_user' is the facility's own DIRAC group"),
    ],
)
def test_a_bad_or_reserved_group_is_refused_naming_it_and_its_source(group, why):
    with pytest.raises(GroupError, match=f"^hub group 'x': {why}"):
        check_group(group, reserved=GROUP, where="hub group 'x'")


@pytest.mark.parametrize("group", ["gridhub_class", "cms_higgs", "lhcb-user", "G" * 64])
def test_dirac_group_names_pass(group):
    assert check_group(group, reserved=GROUP, where="here") == group


def cs_of(state):
    from diracx.core.config.schema import Config

    return Config.model_validate(json.loads((state / "cs" / "default.yml").read_text()))


def test_registration_creates_the_mapped_group_with_normal_user_only(tmp_path):
    state = ensure_state(tmp_path / "state")
    fac = load_facility(state)
    name, changed = register_in_cs(state / "cs", fac, "eve", CLASS_GROUP)
    assert (name, changed) == ("eve", True)
    assert register_in_cs(state / "cs", fac, "eve", CLASS_GROUP) == ("eve", False)
    groups = cs_of(state).registry[fac.vo].groups
    assert {str(p) for p in groups[CLASS_GROUP].properties} == {"NormalUser"}
    assert set(groups[CLASS_GROUP].users) == {user_sub("eve")}
    assert USER_GROUP not in groups  # nobody asked for it
    # her groups changed: she joins the new one, and stays where she was
    assert register_in_cs(state / "cs", fac, "eve", USER_GROUP) == ("eve", True)
    groups = cs_of(state).registry[fac.vo].groups
    assert user_sub("eve") in groups[USER_GROUP].users
    assert user_sub("eve") in groups[CLASS_GROUP].users
    assert user_sub("eve") not in groups[fac.group].users


def test_registration_never_puts_a_user_in_a_privileged_group(tmp_path):
    state = ensure_state(tmp_path / "state")
    fac = load_facility(state)
    before = (state / "cs" / "default.yml").read_text()
    with pytest.raises(GroupError, match="'gridhub_user' is the facility's own DIRAC group"):
        register_in_cs(state / "cs", fac, "mallory", fac.group)
    with pytest.raises(GroupError, match="'bad group' is not a DIRAC group name"):
        register_in_cs(state / "cs", fac, "mallory", "bad group")
    # a group someone gave more than NormalUser in the CS is not joined either
    cs = state / "cs" / "default.yml"
    data = json.loads(before)
    data["Registry"][fac.vo]["Groups"]["admins"] = {
        "Properties": ["NormalUser", "JobAdministrator"],
        "Users": [],
    }
    cs.write_text(json.dumps(data))
    with pytest.raises(GroupError, match=r"'admins' has the properties \['JobAdministrator'"):
        register_in_cs(state / "cs", fac, "mallory", "admins")
    assert "mallory" not in cs.read_text()


def test_the_setting_names_a_bad_group_and_where_it_came_from():
    s = load_settings({"GRIDHUB_DIRACX_GROUPS": '{"class": "gridhub_school"}'})
    assert s.diracx_groups == {"class": "gridhub_school"}
    with pytest.raises(SettingsError) as err:
        load_settings({"GRIDHUB_DIRACX_GROUPS": '{"class": "school kids"}'})
    assert "GRIDHUB_DIRACX_GROUPS (in the environment)" in str(err.value)
    assert "hub group 'class': 'school kids' is not a DIRAC group name" in str(err.value)
    # the embedded DiracX's facility group is reserved; an external DiracX's
    # groups are its own
    with pytest.raises(SettingsError, match="'gridhub_user' is the facility's own DIRAC group"):
        load_settings({"GRIDHUB_DIRACX_GROUPS": '{"default": "gridhub_user"}'})
    external = load_settings(
        {
            "GRIDHUB_DIRACX_URL": "https://diracx.example.org",
            "GRIDHUB_DIRACX_TOKEN_FILE": "/run/secrets/diracx-robot.json",
            "GRIDHUB_DIRACX_GROUPS": '{"default": "gridhub_user"}',
        }
    )
    assert external.diracx_groups == {"default": "gridhub_user"}


def test_the_gateway_refuses_the_facility_group_in_its_map():
    from gridhub.gateway.backend import DiracBackend

    with pytest.raises(
        TraitError, match=r"GRIDHUB_DIRACX_GROUPS\), hub group 'staff': 'gridhub_user'"
    ):
        DiracBackend(diracx_groups={"staff": "gridhub_user"})
    assert DiracBackend(diracx_groups={"class": CLASS_GROUP}).diracx_groups == {
        "class": CLASS_GROUP
    }
