"""Ladder Side-Tuning: a pruned narrow copy of the LM beside it, fed through gated ladders; the LM
keeps no activations for the backward pass; decoding caches the side layers with the LM's."""

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import TASKS, paper_model, random_batch, tiny_vl_model, trainable_names, training_step
from test_bitfit import SMALL, VISUAL_EMBEDDING_PAPER, tiny_t5_model
from vlbench.cli import app
from vlbench.config import RunConfig, UserError
from vlbench.grid import GridRequest, expand
from vlbench.methods import get_method
from vlbench.methods.lst import residual_dims
from vlbench.params import count_parameters
from vlbench.store import Store

MAKERS = {"bart": tiny_vl_model, "t5": tiny_t5_model}


def with_lst(model, width=16, **options):
    cfg = RunConfig(method="lst", sharing="single", hidden_dim=width, method_options=tuple(sorted(options.items())))
    get_method("lst")(cfg).apply(model, TASKS)
    return model


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("family", MAKERS)
def test_at_initialisation_the_model_computes_what_the_lm_does(family):
    base = MAKERS[family]().eval()
    model = with_lst(copy.deepcopy(base)).eval()
    batch = random_batch()
    base.router.task = model.router.task = "vqa"
    torch.testing.assert_close(model(batch), base(batch), rtol=1e-5, atol=1e-6)
    assert torch.equal(model.generate(batch, 3, 6), base.generate(batch, 3, 6))


@pytest.mark.parametrize("family", MAKERS)
def test_cached_decoding_equals_transformers_generate_without_a_cache(family):
    """The side decoder's keys and values live in the LM's cache (layers numbered after the LM's) and
    follow its beam reorders and row selections: the same tokens as recomputing the prefix each step."""
    model = with_lst(MAKERS[family](seed=3)).eval()
    with torch.no_grad():  # a side network that changes the output
        for p in model.method_modules["lst"].parameters():
            p.add_(torch.randn_like(p) * 0.3)
    batch = random_batch(batch_size=4)
    for beams in (1, 3):
        ours = model.generate(batch, beams, 8)
        # transformers repeats the encoder output per beam: the side encoder's too, by encoding the rows repeated
        repeated = {k: v.repeat_interleave(beams, 0) for k, v in batch.items()}
        enc, mask = model.encode_batch(repeated)
        enc.last_hidden_state, mask = enc.last_hidden_state[::beams], mask[::beams]
        reference = model.lm.generate(
            encoder_outputs=enc, attention_mask=mask, num_beams=beams, max_new_tokens=8, do_sample=False,
            use_cache=False, early_stopping=beams > 1,
        )  # fmt: skip
        assert torch.equal(ours, reference), (beams, ours, reference)


@pytest.mark.parametrize("family", MAKERS)
def test_only_the_side_network_ladders_and_visual_embedding_train(family):
    model = with_lst(MAKERS[family]())
    side = {f"method_modules.lst.{n}" for n, _ in model.method_modules["lst"].named_parameters()}
    visual = {f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()}
    assert trainable_names(model) == side | visual
    assert not any(p.requires_grad for p in model.lm.parameters())
    with torch.no_grad():  # `up` starts at zero, which would leave the first step's other gradients zero
        model.method_modules["lst"]["up"].weight.normal_(std=0.1)
    _, changed = training_step(model)
    assert changed == side | visual


@pytest.mark.parametrize("family", MAKERS)
def test_the_lm_keeps_no_activation_for_the_backward_pass(family):
    """What autograd saves for the backward pass: LST saves less than a Single Adapter, which saves less
    than full fine-tuning; no LM layer's output is part of the graph."""

    def saved_bytes(model) -> int:
        total = 0

        def pack(t):
            nonlocal total
            if not isinstance(t, torch.nn.Parameter):
                total += t.numel() * t.element_size()
            return t

        model.router.task = "vqa"
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(random_batch(batch_size=8, text_len=12, target_len=8)).backward()
        return total

    base = MAKERS[family]()
    lst = with_lst(copy.deepcopy(base))
    adapter = copy.deepcopy(base)
    get_method("adapter")(RunConfig(method="adapter", sharing="single", hidden_dim=8)).apply(adapter, TASKS)
    full = copy.deepcopy(base)
    get_method("full")(RunConfig(method="full")).apply(full, TASKS)
    outputs = []
    for stack in ("encoder", "decoder"):
        for layer in lst.family.layers(stack):
            layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    sizes = {name: saved_bytes(m) for name, m in (("lst", lst), ("adapter", adapter), ("full", full))}
    assert outputs and not any(o.requires_grad for o in outputs)
    assert sizes["lst"] < 0.6 * sizes["adapter"] < 0.6 * sizes["full"], sizes


def test_pruning_keeps_the_heaviest_dims_and_copies_their_weights():
    base = tiny_vl_model()
    with torch.no_grad():  # residual dim 5 read heavily by every query projection
        for layer in base.lm.model.encoder.layers:
            layer.self_attn.q_proj.weight[:, 5] *= 50
    model = with_lst(copy.deepcopy(base))
    keep = residual_dims(base, 16)
    assert 5 in keep.tolist() and keep.tolist() == sorted(keep.tolist()) and len(set(keep.tolist())) == 16
    side = model.method_modules["lst"]
    twin, layer = base.lm.model.encoder.layers[1], side["encoder"].layers[1]
    # the side's fc1 rows are some of the LM's FFN units, their columns the kept residual dims
    rows = [
        i for i in range(twin.fc1.out_features)
        if any(torch.equal(twin.fc1.weight[i, keep], r) for r in layer.fc1.weight)
    ]  # fmt: skip
    assert len(rows) == layer.fc1.out_features == twin.fc1.out_features // 4
    torch.testing.assert_close(layer.self_attn_layer_norm.weight, twin.self_attn_layer_norm.weight[keep])
    # every head keeps the same number of dims (16 / 4 heads = 4 of 16), the q rows of those dims
    q = layer.self_attn.q_proj.weight
    assert q.shape == (16, 16)
    for head in range(4):
        block = twin.self_attn.q_proj.weight[head * 16 : (head + 1) * 16][:, keep]
        assert all(any(torch.equal(row, b) for b in block) for row in q[head * 4 : (head + 1) * 4])
    # a ladder starts as the selection of the kept dims
    h = torch.randn(2, 16 * 4)
    torch.testing.assert_close(side["encoder"].downs[0](h), h[:, keep])
    # random init differs from the pruned copy
    other = with_lst(copy.deepcopy(base), side_init="random").method_modules["lst"]["encoder"].layers[1]
    assert not torch.equal(other.fc1.weight, layer.fc1.weight)


def side_count(d: int, w: int, layers: int, ffn: int, heads: int, family: str) -> int:
    """LST's added parameters at width w, counted by hand from the module docstring's structure."""
    ladders = 2 * (layers + 1) * (d * w + w) + 2 * layers  # first_down and one down per layer; gates
    up = w * d + d
    if family == "bart":  # biases everywhere, LayerNorm weight + bias, no final norm (post-LN)
        attention = 4 * (w * w + w)
        feed_forward = w * ffn + ffn + ffn * w + w
        encoder_layer = attention + feed_forward + 2 * 2 * w
        decoder_layer = 2 * attention + feed_forward + 3 * 2 * w
        return layers * (encoder_layer + decoder_layer) + ladders + up
    attention = 4 * w * w  # T5: no biases, RMS norms with a weight, a final norm per stack
    feed_forward = 2 * w * ffn
    encoder_layer = attention + feed_forward + 2 * w
    decoder_layer = 2 * attention + feed_forward + 3 * w
    relative_bias = 2 * 32 * heads  # the first block of each stack
    return layers * (encoder_layer + decoder_layer) + relative_bias + 2 * w + ladders + up


@pytest.mark.parametrize("backbone,family", [("paper", "bart"), ("paper-t5", "t5")])
def test_paper_count_is_the_side_network_ladders_and_the_visual_embedding(backbone, family):
    cfg = RunConfig(profile="paper", backbone=backbone, pool_size=6, tasks=TASKS, method="lst", sharing="single", hidden_dim=192)
    from vlbench.params import skeleton_model

    counts = count_parameters(skeleton_model(cfg))
    added = side_count(768, 192, 6 if family == "bart" else 12, 768, 12, family)
    assert counts.components["method"] == {"trainable": added, "total": added}
    visual = counts.components["visual_embedding"]["trainable"]  # T5's RMS norms have no bias
    assert visual == VISUAL_EMBEDDING_PAPER - (2 * 768 if family == "t5" else 0)
    assert counts.trainable == added + visual
    if family == "t5":  # the LST paper's CLIP-T5 LST row: 7.46% updated
        assert round(counts.percent, 2) == pytest.approx(7.46, abs=0.02)


def test_paper_bart_model_is_lst():
    model = paper_model("lst", "single", 192)
    assert set(model.method_modules) == {"lst"}


def test_grid_default_width_is_d_model_over_four_and_bad_widths_are_refused():
    (tiny,) = expand(GridRequest(methods=("lst",)))
    assert (tiny.sharing, tiny.hidden_dim) == ("single", 16)
    (paper,) = expand(GridRequest(profile="paper", methods=("lst",)))
    assert paper.hidden_dim == 192
    with pytest.raises(UserError, match="--hidden-dims: the side network's width must divide d_model 64, got 48"):
        expand(GridRequest(methods=("lst",), hidden_dims=(48,)))
    with pytest.raises(UserError, match="--sharing: 'multiple' is not available for lst"):
        expand(GridRequest(methods=("lst",), sharing=("multiple",)))
    with pytest.raises(UserError, match="--hidden-dims: a width of 2 does not divide d_model 64 into 4 whole heads"):
        with_lst(tiny_vl_model(), width=2)


def test_sweep_trains_lst_and_it_lands_in_the_report(workdir):
    result = invoke("sweep", "image-text", "--methods", "lst", *SMALL)
    assert result.exit_code == 0, result.output
    (run,) = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method == "lst"]
    assert run.status == "done" and run.hidden_dim == 16 and 0 < run.percent < 100
    rows = json.loads(invoke("report", "--table", "1", "--format", "json").stdout)
    lst = next(row for row in rows if row["method"] == "Ladder Side-Tuning")
    assert lst["group"] == "beyond" and all(lst[t] is not None for t in ("vqa", "gqa", "nlvr", "caption"))
