"""Compacter: the PHM layer, paper parameter counts, options, trainable set and routing."""

import pytest
import torch

import conftest
from conftest import TASKS, assert_gradients_reach_only, distinct_losses_per_task, random_batch, tiny_vl_model
from vlbench.config import RunConfig, UserError
from vlbench.methods.compacter import Compacter, PHMLinear
from vlbench.model import VLModel
from vlbench.params import count_parameters

PER_SITE = 74_608  # paper setting: d_model 768, bottleneck 96, k 2
SITES = 30


def config(sharing="single", hidden_dim=8, **options):
    options = tuple(sorted(options.items()))
    return RunConfig(method="compacter", sharing=sharing, hidden_dim=hidden_dim, method_options=options)


def paper_model(sharing, **options) -> VLModel:
    return conftest.paper_model("compacter", sharing, 96, **options)


def tiny(sharing="single", hidden_dim=8, **options) -> VLModel:
    model = tiny_vl_model()
    Compacter(config(sharing, hidden_dim, **options)).apply(model, TASKS)
    return model


@pytest.mark.parametrize("low_rank", [0, 3])
def test_phm_weight_is_a_sum_of_kronecker_products(low_rank):
    torch.manual_seed(0)
    layer = PHMLinear(12, 8, k=4, low_rank=low_rank)
    torch.nn.init.normal_(layer.bias)
    b = layer.block_matrices()
    assert b.shape == (4, 3, 2)
    if low_rank:  # B_i = s_i t_i^T
        assert torch.equal(b, layer.left @ layer.right) and layer.left.shape == (4, 3, low_rank)
    expected = sum(torch.kron(layer.rule[i], b[i]) for i in range(4))
    assert torch.allclose(layer.weight(), expected, atol=1e-6)
    x = torch.randn(5, 12)
    assert torch.allclose(layer(x), x @ expected + layer.bias, atol=1e-6)


@pytest.mark.parametrize("sharing, paper_percent", [("multiple", 7.05), ("single", 2.70)])
def test_paper_percentages(sharing, paper_percent):
    counts = count_parameters(paper_model(sharing))
    copies = len(TASKS) if sharing == "multiple" else 1
    assert counts.components["method"]["total"] == copies * SITES * PER_SITE
    assert counts.components["lm"]["trainable"] == 32 * 2 * 768  # the LayerNorms
    assert counts.percent == pytest.approx(paper_percent, abs=0.01)


def test_per_site_count():
    adapter = paper_model("single").method_modules["adapters"]["encoder_0_self_attn"]
    assert sum(p.numel() for p in adapter.parameters()) == PER_SITE


def test_shared_rules_keep_one_rule_per_projection_side():
    counts = count_parameters(paper_model("single", shared_rules=True))
    rule = 2 * 2 * 2
    # 2 rules per site replaced by one down rule and one up rule for the whole model
    assert counts.components["method"]["total"] == SITES * (PER_SITE - 2 * rule) + 2 * rule
    adapters = tiny(shared_rules=True).method_modules["adapters"].values()
    downs = {id(a.down["shared"].rule) for a in adapters}
    ups = {id(a.up["shared"].rule) for a in adapters}
    assert len(downs) == len(ups) == 1 and downs != ups


def test_low_rank_blocks():
    counts = count_parameters(paper_model("single", low_rank=1))
    down = 8 + 2 * 384 * 1 + 2 * 1 * 48 + 96
    up = 8 + 2 * 48 * 1 + 2 * 1 * 384 + 768
    assert counts.components["method"]["total"] == SITES * (down + up)
    layer = tiny(low_rank=2).method_modules["adapters"]["encoder_0_ffn"].down["shared"]
    assert layer.left.shape == (2, 32, 2) and layer.right.shape == (2, 2, 4)


def test_bad_k_rejected():
    with pytest.raises(UserError, match="--hidden-dims: 95 is not divisible by the PHM k=2"):
        Compacter.validate("single", 95, 768)
    with pytest.raises(UserError, match="--sharing"):
        Compacter.validate("half", 96, 768)
    Compacter.validate("single", 96, 768)
    with pytest.raises(UserError, match="--hidden-dims: 6 is not divisible by the PHM k=4"):
        tiny(hidden_dim=6, phm_k=4)
    with pytest.raises(UserError, match="--option phm_k: d_model 64 is not divisible by the PHM k=3"):
        tiny(hidden_dim=9, phm_k=3)


def test_training_step_touches_only_intended_parameters():
    model = tiny(phm_k=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for n in trainable:
        assert n.startswith(("method_modules.adapters.", "visual_embedding.")) or "layer_norm" in n or "layernorm" in n
    assert not any(n.startswith("lm.") and ("proj" in n or "fc" in n or "embed_" in n) for n in trainable)
    model.router.task = "vqa"
    model.loss(random_batch()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    assert any(n.endswith(".rule") and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if p.requires_grad)


def test_multiple_routes_gradients_to_the_current_task_only():
    assert_gradients_reach_only(tiny("multiple"), "adapters", "gqa")


@pytest.mark.parametrize("sharing, expect_distinct", [("multiple", True), ("single", False)])
def test_routing_by_sharing(sharing, expect_distinct):
    model = tiny(sharing)
    for p in model.method_modules.parameters():  # make every module clearly non-zero
        torch.nn.init.normal_(p, std=0.5)
    assert distinct_losses_per_task(model) == (len(TASKS) if expect_distinct else 1)
