"""The method interface: trainable sets, gradients, routing per sharing mode."""

import pytest
import torch

from conftest import TASKS, distinct_losses_per_task, random_batch, tiny_vl_model, trainable_names, training_step
from vlbench.config import RunConfig, UserError
from vlbench.methods import METHODS, get_method
from vlbench.methods.adapter import Adapter


def build(method: str, sharing=None, hidden_dim=None, **options):
    model = tiny_vl_model()
    cfg = RunConfig(method=method, sharing=sharing, hidden_dim=hidden_dim, method_options=tuple(sorted(options.items())))
    get_method(method)(cfg).apply(model, TASKS)
    return model


def test_full_trains_everything():
    model = build("full")
    assert all(p.requires_grad for p in model.parameters())


def test_adapter_trainable_set_is_adapters_layernorms_and_visual_embedding():
    model = build("adapter", "single", 8)
    names = trainable_names(model)
    for n in names:
        assert n.startswith(("method_modules.adapters.", "visual_embedding.")) or "layer_norm" in n or "layernorm" in n
    assert any("layernorm_embedding" in n for n in names)
    assert not any("embed_tokens" in n or n.startswith("lm.model.shared") for n in names)
    assert not any(n.startswith("lm.") and ("q_proj" in n or "fc1" in n) for n in names)
    # 2 sites per encoder layer + 3 per decoder layer
    assert len(model.method_modules["adapters"]) == 2 * 2 + 3 * 2


def test_training_step_changes_only_trainable_parameters():
    model = build("adapter", "single", 8)
    _, changed = training_step(model)
    assert changed and changed <= trainable_names(model)
    assert any(n.startswith("method_modules.") for n in changed)


def test_adapter_with_zero_up_projection_is_identity():
    base = tiny_vl_model().eval()
    model = build("adapter", "single", 8).eval()
    for adapter in model.method_modules["adapters"].values():
        for up in adapter.up.values():
            torch.nn.init.zeros_(up.weight)
            torch.nn.init.zeros_(up.bias)
    model.router.task = "vqa"
    batch = random_batch()
    assert torch.allclose(model.loss(batch), base.loss(batch), atol=1e-6)


@pytest.mark.parametrize("sharing, expect_distinct", [("multiple", True), ("single", False), ("half", True)])
def test_routing_by_sharing(sharing, expect_distinct):
    model = build("adapter", sharing, 8)
    for adapter in model.method_modules["adapters"].values():  # make every module clearly non-zero
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.5)
    assert distinct_losses_per_task(model) == (len(TASKS) if expect_distinct else 1)


def test_half_sharing_shares_up_projection_only():
    adapter = next(iter(build("adapter", "half", 8).method_modules["adapters"].values()))
    assert set(adapter.up) == {"shared"} and set(adapter.down) == set(TASKS)
    adapter = next(iter(build("adapter", "half", 8, half_shared="down").method_modules["adapters"].values()))
    assert set(adapter.down) == {"shared"} and set(adapter.up) == set(TASKS)
    multiple = next(iter(build("adapter", "multiple", 8).method_modules["adapters"].values()))
    assert set(multiple.up) == set(multiple.down) == set(TASKS)


def test_per_task_modules_need_a_current_task():
    model = build("adapter", "multiple", 8)
    with pytest.raises(RuntimeError, match="no current task"):
        model.loss(random_batch())


def test_validation_names_the_flag():
    with pytest.raises(UserError, match="--sharing"):
        Adapter.validate("both", 8, 64)
    with pytest.raises(UserError, match="--hidden-dims"):
        Adapter.validate("single", 0, 64)
    with pytest.raises(UserError, match="--methods"):
        get_method("nope")
    assert set(METHODS) >= {"full", "adapter"}


def test_ablations_train_projection_and_layernorms_only():
    proj = trainable_names(build("proj-only"))
    assert proj and all(n.startswith("visual_embedding.") for n in proj)
    proj_ln = trainable_names(build("proj-ln"))
    extra = proj_ln - proj
    assert extra and all("layer_norm" in n or "layernorm" in n for n in extra)
    assert len(extra) == 2 * (2 * 2 + 3 * 2 + 2)  # weight + bias of every LN of the tiny BART (2+2 layers)
