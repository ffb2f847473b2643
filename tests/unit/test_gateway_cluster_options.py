"""The cluster options users pick from: sites, tags, banned sites, memory."""

import pytest
from gridhub.gateway.backend import default_cluster_options

SITES = {"LCG.Local.gridhub": [], "LCG.GPU.gridhub": ["GPU"]}


def configure(options, **requested):
    return options.get_configuration(options.parse_options(requested), user=None)


def test_tags_sites_and_banned_sites_reach_the_cluster_config():
    options = default_cluster_options(sites=SITES)
    assert configure(options)["job_tags"] == []
    config = configure(options, tags=" GPU ,", worker_memory=3)
    assert config["job_tags"] == ["GPU"]
    assert config["worker_memory"] == 3 * 2**30  # the JDL's MinRAM/MaxRAM come from it
    config = configure(options, site="LCG.GPU.gridhub", banned_sites="LCG.Bad.fr")
    assert config["sites"] == ["LCG.GPU.gridhub"]
    assert config["banned_sites"] == ["LCG.Bad.fr"]


@pytest.mark.parametrize(
    "requested",
    [
        {"tags": "TPU"},
        {"tags": "GPU", "site": "LCG.Local.gridhub"},
        {"tags": "GPU", "banned_sites": "LCG.GPU.gridhub"},
    ],
)
def test_a_tag_no_allowed_site_offers_is_refused_naming_it(requested):
    options = default_cluster_options(sites=SITES)
    with pytest.raises(ValueError, match=r"no site you allowed offers the tags \['(T|G)PU'\]") as e:
        configure(options, **requested)
    assert "LCG.GPU.gridhub" in str(e.value)  # where the tag is offered


def test_without_a_catalogue_dirac_decides():
    options = default_cluster_options(sites=["LCG.CERN.cern"])
    assert configure(options, tags="TPU")["job_tags"] == ["TPU"]
    assert configure(default_cluster_options(), tags="GPU")["job_tags"] == ["GPU"]
