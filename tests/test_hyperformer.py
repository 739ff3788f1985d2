"""Hyperformer: paper parameter count, gradients, per-task generation from shared generators."""

import pytest
import torch

from conftest import TASKS, distinct_losses_per_task, paper_model, random_batch, tiny_vl_model
from vlbench.config import RunConfig
from vlbench.methods.hyperformer import Hyperformer
from vlbench.params import count_parameters

PAPER_HYPERNET = 6_947_088
LM_LAYER_NORMS = 32 * 2 * 768
VISUAL_EMBEDDING = 1_582_848


def apply_hyperformer(model, hidden_dim, tasks=TASKS):
    Hyperformer(RunConfig(method="hyperformer", hidden_dim=hidden_dim)).apply(model, tasks)
    return model


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_paper_count_and_table1_percent():
    counts = count_parameters(paper_model("hyperformer", None, 96))
    assert counts.components["method"] == {"trainable": PAPER_HYPERNET, "total": PAPER_HYPERNET}
    assert counts.trainable == PAPER_HYPERNET + LM_LAYER_NORMS + VISUAL_EMBEDDING
    assert counts.percent == pytest.approx(5.79, abs=0.01)


def test_trainable_set_and_gradients():
    model = apply_hyperformer(tiny_vl_model(), 8)
    layer_norm_params = {id(p) for ln in model.layer_norms() for p in ln.parameters()}
    expected = {
        n
        for n, p in model.named_parameters()
        if n.startswith(("method_modules.hyperformer.", "visual_embedding.")) or id(p) in layer_norm_params
    }
    assert trainable_names(model) == expected
    model.router.task = "vqa"
    model.loss(random_batch()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_training_step_changes_only_trainable_parameters():
    model = apply_hyperformer(tiny_vl_model(), 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.router.task = "gqa"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.loss(random_batch()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable_names(model)
    assert {"method_modules.hyperformer.task_embeddings.weight"} <= changed
    assert any(".generators." in n for n in changed)


def test_tasks_get_different_adapters_from_shared_generators():
    model = apply_hyperformer(tiny_vl_model(), 8)
    hypernet = model.method_modules["hyperformer"]
    for p in hypernet.stacks.parameters():  # make the generated adapters clearly non-zero
        torch.nn.init.normal_(p, std=0.5)
    vqa = hypernet("vqa", "decoder")[1, "cross_attn"]
    gqa = hypernet("gqa", "decoder")[1, "cross_attn"]
    assert vqa["down_weight"].shape == (8, 64) and vqa["up_weight"].shape == (64, 8)
    assert not torch.allclose(vqa["down_weight"], gqa["down_weight"])
    # one batched pass over the layers gives what each layer's own pass through the projector and
    # its generator gives
    stack, task = hypernet.stacks["decoder"], hypernet.task_embeddings.weight[hypernet.task_index["vqa"]]
    cond = stack.projector(torch.cat([task, stack.layer_embeddings.weight[1]])[None])
    alone = stack.generators["cross_attn"](cond)
    for name, w in vqa.items():
        assert torch.allclose(w, alone[name][0], atol=1e-6), name
    # nothing but the task embedding depends on the number of tasks
    two_tasks = apply_hyperformer(tiny_vl_model(), 8, tasks=TASKS[:2]).method_modules["hyperformer"]
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(hypernet) - n_params(two_tasks) == 2 * 512
    assert distinct_losses_per_task(model) == len(TASKS)


def test_zero_up_generators_give_the_plain_model():
    base = tiny_vl_model().eval()
    model = apply_hyperformer(tiny_vl_model(), 8).eval()
    for stack in model.method_modules["hyperformer"].stacks.values():
        for generator in stack.generators.values():
            for p in [*generator.up_weight.parameters(), *generator.up_bias.parameters()]:
                torch.nn.init.zeros_(p)
    model.router.task = "nlvr"
    batch = random_batch()
    assert torch.allclose(model.loss(batch), base.loss(batch), atol=1e-6)


def test_needs_a_current_task():
    model = apply_hyperformer(tiny_vl_model(), 8)
    with pytest.raises(RuntimeError, match="no current task"):
        model.loss(random_batch())
