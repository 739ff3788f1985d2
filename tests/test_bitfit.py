"""BitFit: the LM's bias terms (Linear and LayerNorm) and theta V->L train; on T5, which has none,
zero-initialised biases are added (as the LST reference does); accounting, one step, sweep, report."""

import json

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerNorm
from typer.testing import CliRunner

from conftest import FEAT_DIM, TASKS, paper_model, random_batch, tiny_vl_model, trainable_names, training_step
from vlbench.backbones import BACKBONES, BART_BASE, T5_BASE, build_lm_from_config
from vlbench.cli import app
from vlbench.config import RunConfig
from vlbench.grid import GridRequest, expand
from vlbench.methods import get_method
from vlbench.methods.bitfit import AddedBias
from vlbench.model import VLModel
from vlbench.params import count_for_config, count_parameters
from vlbench.paper import TABLE1
from vlbench.report import TABLES, group_of, order_key, row_label
from vlbench.store import Store

SMALL = ["--epochs", "1", "--n-train", "24", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
BART_BASE_BIASES = 125_952  # docs/paper-facts.md §2: every `bias` of BART-base (Linear and LayerNorm)
VISUAL_EMBEDDING_PAPER = 1_582_848  # theta V->L at F = 2048, d 768 (docs/paper-facts.md §3)


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def tiny_t5_model(seed: int = 0, vocab: int = 40) -> VLModel:
    torch.manual_seed(seed)
    lm = build_lm_from_config(BACKBONES["tiny-t5"], vocab_size=vocab)
    return VLModel(lm, FEAT_DIM, BACKBONES["tiny-t5"].n_vis_tokens, pool_size=3)


def with_bitfit(model: VLModel) -> VLModel:
    get_method("bitfit")(RunConfig(method="bitfit")).apply(model, TASKS)
    return model


def test_bart_trainable_set_is_every_lm_bias_and_the_visual_embedding():
    model = with_bitfit(tiny_vl_model())
    lm_biases = {f"lm.{n}" for n, _ in model.lm.named_parameters() if n.endswith(".bias")}
    visual = {f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()}
    assert trainable_names(model) == lm_biases | visual
    assert "bitfit" not in model.method_modules  # BART has its biases: nothing added
    # Linear and LayerNorm biases both; no LayerNorm weight, no Linear weight
    assert any("fc1.bias" in n for n in lm_biases) and any("q_proj.bias" in n for n in lm_biases)
    assert any("self_attn_layer_norm.bias" in n for n in lm_biases)
    assert any("layernorm_embedding.bias" in n for n in lm_biases)
    assert not any(n.startswith("lm.") and n.endswith(".weight") for n in trainable_names(model))
    # final_logits_bias is a buffer, not a parameter: it is never trained (nor counted)
    assert "final_logits_bias" in dict(model.lm.named_buffers())
    assert "final_logits_bias" not in {n.rsplit(".", 1)[-1] for n, _ in model.lm.named_parameters()}


def test_paper_bart_count_is_the_lm_biases_plus_the_visual_embedding():
    model = paper_model("bitfit")
    counts = count_parameters(model)
    with torch.device("meta"):  # an independent count: a plain transformers BART-base
        bare = BartForConditionalGeneration(BartConfig(**BART_BASE))
    biases = sum(p.numel() for n, p in bare.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
    visual = sum(p.numel() for p in model.visual_embedding.parameters())
    assert biases == BART_BASE_BIASES and visual == VISUAL_EMBEDDING_PAPER
    assert counts.components["lm"]["trainable"] == biases
    assert counts.components["visual_embedding"]["trainable"] == visual
    assert counts.components["method"] == {"trainable": 0, "total": 0}
    assert counts.components["vis_tokens"]["trainable"] == 0
    assert counts.trainable == biases + visual == 1_708_800
    assert counts.total == count_parameters(paper_model("full")).total  # BitFit adds nothing to BART
    assert counts.percent == pytest.approx(1.2106, abs=1e-4)


def test_params_cli_counts_bitfit():
    result = invoke("params", "image-text", "--profile", "paper", "--methods", "full,bitfit", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads(result.stdout)}
    assert rows["bitfit"]["trainable"] == BART_BASE_BIASES + VISUAL_EMBEDDING_PAPER
    assert rows["bitfit"]["total"] == rows["full"]["total"]
    assert rows["bitfit"]["sharing"] is None and rows["bitfit"]["hidden_dim"] is None


def test_bitfit_has_no_sharing_or_hidden_dim_and_the_profile_default_lr():
    (tiny,) = expand(GridRequest(methods=("bitfit",), sharing=("single",), hidden_dims=(8, 16)))
    assert (tiny.sharing, tiny.hidden_dim, tiny.optim.lr) == (None, None, 3e-3)
    (paper,) = expand(GridRequest(profile="paper", methods=("bitfit",)))
    assert paper.optim.lr == 1e-3


@pytest.mark.parametrize("make", [tiny_vl_model, tiny_t5_model], ids=["bart", "t5"])
def test_training_step_changes_only_trainable_parameters(make):
    model = with_bitfit(make())
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    before, changed = training_step(model)
    trainable = trainable_names(model)
    assert changed <= trainable
    for n, p in model.named_parameters():  # frozen weights bitwise unchanged
        if n not in trainable:
            assert torch.equal(p, before[n]), n
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # final_logits_bias too
    biases = {n for n in changed if not n.startswith("visual_embedding.")}
    assert biases and all(n.endswith(".bias") for n in biases)


def test_t5_gets_zero_initialised_biases_that_leave_the_model_unchanged():
    base = tiny_t5_model().eval()
    model = with_bitfit(tiny_t5_model()).eval()
    added = model.method_modules["bitfit"]
    visual = {f"visual_embedding.{n}" for n, _ in model.visual_embedding.named_parameters()}
    assert trainable_names(model) == {f"method_modules.bitfit.{n}" for n, _ in added.named_parameters()} | visual
    assert not any(p.requires_grad for p in model.lm.parameters())  # relative_attention_bias included
    # a bias on every Linear of both stacks (q, k, v, o, wi, wo) and every T5LayerNorm; not on lm_head
    linears = [m for stack in (model.lm.encoder, model.lm.decoder) for m in stack.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in model.lm.modules() if isinstance(m, T5LayerNorm)]
    assert len(added) == len(linears) + len(norms)
    assert not any("lm_head" in key for key in added)
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in added.values())
    batch = random_batch()
    model.router.task = base.router.task = "vqa"
    with torch.no_grad():
        assert torch.equal(model.loss(batch), base.loss(batch))  # zero biases: the pretrained function
        for b in added.values():
            b.bias.fill_(0.1)
        assert not torch.equal(model.loss(batch), base.loss(batch))  # and they are in the forward pass


def test_paper_t5_count_adds_one_bias_per_linear_and_layer_norm():
    (cfg,) = expand(GridRequest(profile="paper", lm="t5", methods=("bitfit",)))
    counts = count_for_config(cfg)
    with torch.device("meta"):  # independent: the output sizes of a plain T5-base's Linears and norms
        bare = T5ForConditionalGeneration(T5Config(**T5_BASE))
    stacks = (bare.encoder, bare.decoder)
    independent = sum(m.out_features for s in stacks for m in s.modules() if isinstance(m, torch.nn.Linear))
    independent += sum(m.weight.numel() for m in bare.modules() if isinstance(m, T5LayerNorm))
    # analytic: encoder blocks q,k,v,o + wi + wo + 2 norms; decoder blocks 2 attentions + FFN + 3 norms; 2 final norms
    analytic = 12 * (4 * 768 + 3072 + 768 + 2 * 768) + 12 * (8 * 768 + 3072 + 768 + 3 * 768) + 2 * 768
    assert independent == analytic == 250_368
    assert counts.components["method"] == {"trainable": analytic, "total": analytic}
    assert counts.components["lm"]["trainable"] == 0
    full = count_for_config(expand(GridRequest(profile="paper", lm="t5", methods=("full",)))[0])
    visual = counts.components["visual_embedding"]["trainable"]
    assert visual == VISUAL_EMBEDDING_PAPER - 2 * 768  # T5LayerNorm in theta V->L: weight only
    assert counts.trainable == analytic + visual
    assert counts.total == full.total + analytic


def test_added_bias_keeps_the_output_dtype():
    out = AddedBias(4)(torch.zeros(2, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_report_places_bitfit_after_the_paper_rows_before_the_reference():
    spec = TABLES[1]
    assert row_label("bitfit", None) == "BitFit" and group_of("bitfit") == "beyond"
    bitfit = order_key(spec, "bitfit", None, {}, None)
    assert all(order_key(spec, p.method, p.sharing, dict(p.options), p.hidden_dim) < bitfit for p in TABLE1)
    assert bitfit < order_key(spec, "text-only", None, {}, None)
    assert spec.shows("bitfit", None) and TABLES[2].shows("bitfit", None)


def test_sweep_trains_bitfit_and_it_lands_in_the_report(workdir):
    result = invoke("sweep", "image-text", "--methods", "full,bitfit", *SMALL)
    assert result.exit_code == 0, result.output
    store = Store(Store.default_url(workdir / "runs"))
    runs = {r.method: r for r in store.runs()}
    assert runs["bitfit"].status == "done" and runs["bitfit"].sharing is None and runs["bitfit"].hidden_dim is None
    assert 0 < runs["bitfit"].percent < 100
    result = invoke("report", "--table", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    labels = [row["method"] for row in rows]
    assert labels == ["Full fine-tuning", "BitFit", "Text-only prior (no visual input)"]  # paper rows first
    bitfit = rows[1]
    assert bitfit["group"] == "beyond" and bitfit["params_percent"] == round(runs["bitfit"].percent, 2)
    assert all(bitfit[t] is not None for t in ("vqa", "gqa", "nlvr", "caption"))
    markdown = invoke("report", "--table", "1", "--format", "markdown")
    assert markdown.exit_code == 0 and "BitFit" in markdown.output


def test_tradeoff_plot_draws_bitfit_in_its_own_colour_and_marker(tmp_path):
    from matplotlib.colors import to_hex

    from vlbench.plot import FAMILY_COLORS, METHOD_STYLES, Series, TradeoffData, plot_tradeoff

    series = [
        Series("Single Adapter", "adapter", "single", [(4.0, 60.0, None, 8)]),
        Series("BitFit", "bitfit", None, [(1.2, 55.0, None, None)]),
    ]
    data = TradeoffData("avg", series, {"Full fine-tuning": 62.0}, [(1.2, 55.0), (4.0, 60.0)])
    fig = plot_tradeoff(data, tmp_path / "f.png")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    assert "BitFit" in labels
    bitfit = handles[labels.index("BitFit")].lines[0]  # an errorbar container's data line
    assert to_hex(bitfit.get_color()) == FAMILY_COLORS["bitfit"] != FAMILY_COLORS["adapter"]
    assert bitfit.get_marker() == METHOD_STYLES["bitfit"][0]
    assert (tmp_path / "f.png").exists()
