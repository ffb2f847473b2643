"""Per-group limits: which apply to a user, and how many workers they leave."""

import pytest
from gridhub.gateway.limits import Limits, allowed_workers, check_table, limits_for
from gridhub.hub.settings import SettingsError, load_settings

TABLE = {
    "class": {"clusters": 1, "workers": 2},
    "staff": {"clusters": 5, "cores": 64},
    "default": {"clusters": 3, "workers": 10, "cores": 32},
}


def test_a_user_gets_the_most_generous_of_their_listed_groups():
    assert limits_for(["class"], TABLE) == Limits(clusters=1, workers=2, source="class")
    # a kind a group leaves out is unlimited for it, so for its members
    assert limits_for(["class", "staff", "x"], TABLE) == Limits(clusters=5, source="class, staff")
    assert limits_for(["staff"], TABLE) == Limits(clusters=5, cores=64, source="staff")
    assert limits_for(["x"], TABLE) == Limits(clusters=3, workers=10, cores=32, source="default")
    assert limits_for([], {}) == Limits()


def test_a_groups_idle_timeout_cuts_the_deployers():
    lim = limits_for(["class"], {"class": {"idle_timeout": 600}})
    assert lim.idle_timeout == 600
    assert lim.cluster_idle_timeout(1800) == 600  # shorter: the group's
    assert lim.cluster_idle_timeout(300) == 300  # the deployer's is shorter
    assert lim.cluster_idle_timeout(0) == 600  # the deployer's 0 means never
    assert Limits().cluster_idle_timeout(1800) == 1800
    # a group without one leaves its members unlimited: the deployer's applies
    both = limits_for(["class", "staff"], {"class": {"idle_timeout": 600}, "staff": {}})
    assert both.cluster_idle_timeout(1800) == 1800


def test_workers_left_count_the_users_other_clusters():
    lim = Limits(workers=10, cores=32)
    assert allowed_workers(lim, 4, others_workers=2, others_cores=8) == 6  # cores: 24 // 4
    assert allowed_workers(lim, 1, others_workers=9, others_cores=9) == 1  # workers
    assert allowed_workers(lim, 1, others_workers=12, others_cores=0) == 0
    assert allowed_workers(Limits(), 1, 100, 100) is None


def test_a_bad_table_is_refused_naming_the_group_and_key():
    with pytest.raises(ValueError, match="limits of 'class': unknown limit 'worker'"):
        check_table({"class": {"worker": 2}})
    with pytest.raises(ValueError, match="limits of 'x': cores must be an integer >= 0"):
        check_table({"x": {"cores": -1}})


def test_the_setting_reads_json_from_the_environment():
    s = load_settings({"GRIDHUB_GATEWAY_GROUP_LIMITS": '{"class": {"clusters": 1}}'})
    assert s.gateway_group_limits == {"class": {"clusters": 1}}
    with pytest.raises(SettingsError, match="GRIDHUB_GATEWAY_GROUP_LIMITS"):
        load_settings({"GRIDHUB_GATEWAY_GROUP_LIMITS": '{"class": 1}'})
