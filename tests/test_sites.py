"""Site registry: names, layer convention, ordering, resolution (no model needed)."""

import pytest

from cgar_interp.sites import Site, all_sites, get_kind, parse_site, register_kind, site_kinds


def test_round_trip_every_kind():
    for name in site_kinds():
        site = parse_site(f"{name}.1", n_layers=4)
        assert str(site) == f"{name}.1"
        assert parse_site(str(site)) == site


def test_resid_layer_convention_resolves_to_block_boundaries():
    # resid.l is the residual after l blocks: resid.0 = embeddings, resid.L = last block's output
    assert parse_site("resid.0").hf_module_path() == "model.embed_tokens"
    assert parse_site("resid.3").hf_module_path() == "model.layers.2"
    assert parse_site("resid.0").tl_hook_name(4) == "blocks.0.hook_resid_pre"
    assert parse_site("resid.3").tl_hook_name(4) == "blocks.3.hook_resid_pre"
    assert parse_site("resid.4").tl_hook_name(4) == "blocks.3.hook_resid_post"
    assert parse_site("attn_pattern.2").tl_hook_name(4) == "blocks.2.attn.hook_pattern"
    assert parse_site("z.2").hf_module_path() == "model.layers.2.self_attn.o_proj"


def test_layer_ranges():
    parse_site("resid.4", n_layers=4)  # final residual exists
    with pytest.raises(ValueError, match=r"layer 5 is out of range .*valid layers are 0\.\.4"):
        parse_site("resid.5", n_layers=4)
    with pytest.raises(ValueError, match=r"layer 4 is out of range .*valid layers are 0\.\.3"):
        parse_site("mlp_out.4", n_layers=4)
    with pytest.raises(ValueError, match=r"layer -1 is out of range"):
        parse_site("q.-1", n_layers=4)


def test_unknown_kind_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown site kind 'rsid'; did you mean 'resid'\?"):
        parse_site("rsid.3")
    with pytest.raises(ValueError, match=r"not of the form '<kind>.<layer>'"):
        parse_site("resid")
    with pytest.raises(ValueError, match=r"layer 'x', which is not an integer"):
        parse_site("resid.x")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_kind(get_kind("resid"))


def test_execution_order_is_monotone_in_the_forward_pass():
    sites = all_sites(2)
    orders = [s.order for s in sites]
    assert orders == sorted(orders)
    # inside a block: resid in < q < k < v < z < pattern/attn_out < resid_mid < mlp_out < resid out
    names = [str(s) for s in sites if s.layer == 1 or str(s) == "resid.2"]
    assert names.index("q.1") < names.index("z.1") < names.index("resid_mid.1")
    assert names.index("mlp_out.1") < names.index("resid.2")
    assert Site("resid", 1).order < Site("q", 1).order


def test_derived_kinds_name_their_base():
    assert parse_site("k_rep.1").base() == Site("k", 1)
    assert parse_site("head_out.0").base() == Site("z", 0)
    assert parse_site("resid.2").base() == Site("resid", 2)
