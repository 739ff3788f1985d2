"""CLIP-T5 (the paper's Table 2): the T5 language model behind the same VL model, methods and sweep."""

import copy
import dataclasses

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerNorm
from typer.testing import CliRunner

from conftest import FAST_BACKBONE, FEAT_DIM, TASKS, random_batch, tiny_vl_model
from vlbench import backbones
from vlbench.backbones import BACKBONES, T5_BASE, build_lm_from_config
from vlbench.cli import app
from vlbench.config import RunConfig, UserError
from vlbench.grid import GridRequest, expand
from vlbench.methods import METHODS
from vlbench.methods.adapter import Adapter
from vlbench.model import VLModel
from vlbench.params import count_for_config
from vlbench.store import Store

T5_BASE_PARAMS = 222_903_552


def tiny_t5_model(seed: int = 0, vocab: int = 40) -> VLModel:
    torch.manual_seed(seed)
    lm = build_lm_from_config(BACKBONES["tiny-t5"], vocab_size=vocab)
    return VLModel(lm, FEAT_DIM, BACKBONES["tiny-t5"].n_vis_tokens, pool_size=3)


def test_paper_t5_parameter_count():
    with torch.device("meta"):
        bare = T5ForConditionalGeneration(T5Config(**T5_BASE))
        lm = build_lm_from_config(BACKBONES["paper-t5"])
    assert sum(p.numel() for p in bare.parameters()) == T5_BASE_PARAMS  # tied lm_head counted once
    assert sum(p.numel() for p in lm.parameters()) == T5_BASE_PARAMS + 200 * 768
    assert lm.lm_head.weight is lm.shared.weight is lm.encoder.embed_tokens.weight


def test_paper_t5_accounting():
    (full,) = expand(GridRequest(profile="paper", lm="t5", methods=("full",)))
    counts = count_for_config(full)
    assert full.backbone == "paper-t5"
    assert counts.components["lm"]["total"] == T5_BASE_PARAMS
    assert counts.components["vis_tokens"]["total"] == 200 * 768
    # VL-T5's visual embedding uses T5LayerNorm (weight only): 2 * 768 fewer than CLIP-BART's
    assert counts.components["visual_embedding"]["total"] == 1_582_848 - 2 * 768
    assert counts.percent == 100.0
    (adapter,) = expand(GridRequest(profile="paper", lm="t5", methods=("adapter",), hidden_dims=(192,)))
    counts = count_for_config(adapter)
    assert counts.components["method"]["total"] == 60 * (2 * 768 * 192 + 192 + 768)  # 2*12 + 3*12 sites
    assert counts.components["lm"]["trainable"] == (2 * 12 + 3 * 12 + 2) * 768  # every T5LayerNorm, weight only
    assert counts.percent == pytest.approx(7.98, abs=0.02)  # the paper's CLIP-T5 Single Adapter


def test_forward_backward_generate_and_choices():
    model = tiny_t5_model()
    batch = random_batch()
    model.train()
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.visual_embedding.feat_embedding[0].weight.grad is not None
    assert model.lm.shared.weight.grad is not None
    model.eval()
    out = model.generate(batch, num_beams=2, max_new_tokens=4)
    assert out.shape[0] == 3 and out.shape[1] <= 5
    assert (out[:, 0] == model.lm.config.pad_token_id).all()  # T5's decoder starts from <pad>
    choices = model.choice_logits(batch, [7, 9])
    enc, mask = model.encode(batch["input_ids"], batch["attention_mask"], batch["feats"])
    start = torch.tensor([[1, 0]]).expand(3, -1)  # [<pad>, <s>]: targets read "<s> answer </s>"
    logits = model.lm(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=start).logits[:, -1]
    assert torch.allclose(choices, logits[:, [7, 9]])


def test_encoder_appends_visual_tokens_and_prefix():
    model = tiny_t5_model().eval()
    batch = random_batch(batch_size=2, text_len=5)
    enc, mask = model.encode(batch["input_ids"], batch["attention_mask"], batch["feats"])
    assert enc.last_hidden_state.shape == (2, 5 + 9, 64) and mask.shape == (2, 14)
    model.encoder_prefix = lambda n: torch.zeros(n, 7, 64)
    enc, mask = model.encode(batch["input_ids"], batch["attention_mask"], batch["feats"])
    assert enc.last_hidden_state.shape == (2, 7 + 5 + 9, 64) and mask[:, :7].all()
    assert isinstance(model.visual_embedding.feat_embedding[1], T5LayerNorm)


@pytest.mark.parametrize("make", [tiny_vl_model, tiny_t5_model], ids=["bart", "t5"])
def test_text_encoder_pass_matches_the_lm(make):
    """The layout's embedding + encoder stack is exactly the LM's own text encoder."""
    model = make().eval()
    ids = random_batch(batch_size=2, text_len=6)["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    ours = model.family.encoder_stack(model.family.embed_text(ids), mask)
    theirs = model.lm.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_t5_sites_and_projections():
    model = tiny_t5_model()
    sites = model.sublayer_sites()
    assert len(sites) == 2 * 2 + 3 * 2
    kinds = [(s.stack, s.kind, type(s.module).__name__) for s in sites[:2] + sites[4:7]]
    assert kinds == [
        ("encoder", "self_attn", "T5Attention"),
        ("encoder", "ffn", "T5DenseActDense"),
        ("decoder", "self_attn", "T5Attention"),
        ("decoder", "cross_attn", "T5Attention"),
        ("decoder", "ffn", "T5DenseActDense"),
    ]
    projections = model.query_value_projections()
    assert [name for name, _, _ in projections] == [s.name for s in sites if s.kind != "ffn"]
    assert all(q is attn.q and v is attn.v for (_, q, v), (_, attn) in zip(projections, model.attention_modules()))
    assert len(model.layer_norms()) == 2 * 2 + 3 * 2 + 2
    bart = tiny_vl_model().query_value_projections()
    assert all(q.out_features == v.out_features == 64 for _, q, v in bart) and len(bart) == 6


def test_adapter_with_zero_up_projection_is_the_identity():
    plain = tiny_t5_model()
    adapted = copy.deepcopy(plain)
    cfg = RunConfig(backbone="tiny-t5", method="adapter", sharing="single", hidden_dim=8, tasks=TASKS)
    Adapter(cfg).apply(adapted, TASKS)
    adapters = adapted.method_modules["adapters"]
    assert len(adapters) == 10
    with torch.no_grad():
        for adapter in adapters.values():
            for up in adapter.up.values():
                up.weight.zero_()
                up.bias.zero_()
    assert all(p.requires_grad for ln in adapted.layer_norms() for p in ln.parameters())
    assert not adapted.lm.shared.weight.requires_grad
    plain.eval(), adapted.eval()
    adapted.router.task = "vqa"
    batch = random_batch()
    assert torch.equal(plain.loss(batch), adapted.loss(batch))
    with torch.no_grad():
        next(iter(adapters.values())).up["shared"].bias.fill_(0.1)
    assert not torch.equal(plain.loss(batch), adapted.loss(batch))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_on_t5(name):
    method = METHODS[name]
    cfg = RunConfig(
        backbone="tiny-t5", method=name, sharing=method.default_sharing,
        hidden_dim=8 if method.uses_hidden_dim else None, tasks=TASKS,
        method_options=(("config", "lora"),) if name == "peft" else (),
    )
    model = tiny_t5_model()
    method(cfg).apply(model, TASKS)
    model.router.task = "vqa"
    model.loss(random_batch()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_lora_on_t5_wraps_q_and_v():
    model = tiny_t5_model()
    cfg = RunConfig(backbone="tiny-t5", method="lora", sharing="single", hidden_dim=4, tasks=TASKS)
    METHODS["lora"](cfg).apply(model, TASKS)
    assert len(model.method_modules["lora"]) == 2 * 6  # q and v of 2 encoder self + 2 decoder self + 2 cross
    lm_trainable = {n for n, p in model.lm.named_parameters() if p.requires_grad}
    assert lm_trainable == {  # T5 has no biases; the name match leaves the relative position tables
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    }


def test_grid_lm_picks_the_backbone():
    assert {c.backbone for c in expand(GridRequest(lm="t5"))} == {"tiny-t5"}
    assert {c.backbone for c in expand(GridRequest(profile="paper", lm="t5"))} == {"paper-t5"}
    assert {c.backbone for c in expand(GridRequest())} == {"tiny"}
    with pytest.raises(UserError, match="--lm"):
        expand(GridRequest(lm="gpt"))


def test_sweep_with_t5_through_the_cli(tmp_path, monkeypatch):
    fast = dataclasses.replace(BACKBONES["tiny-t5"], pretrain=FAST_BACKBONE.pretrain)
    monkeypatch.setitem(backbones.BACKBONES, "tiny-t5", fast)
    monkeypatch.chdir(tmp_path)
    small = ["--epochs", "1", "--n-train", "16", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
    result = CliRunner().invoke(app, ["sweep", "image-text", "--lm", "t5", "--methods", "adapter", *small])
    assert result.exit_code == 0, result.output
    runs = {r.method: r for r in Store(Store.default_url(tmp_path / "runs")).runs()}
    assert set(runs) == {"adapter", "text-only"}
    assert all(r.status == "done" for r in runs.values())
    assert 0 < runs["adapter"].percent < 100
    assert any(p.name.startswith("tiny-t5-") for p in (tmp_path / "runs" / "cache" / "backbones").iterdir())

    result = CliRunner().invoke(app, ["params", "image-text", "--lm", "t5", "--methods", "full", "--format", "json"])
    assert result.exit_code == 0 and '"percent": 100.0' in result.output
