"""The decoder-only (LLaMA-lineage) LM family: [visual tokens][text][target] in one causal sequence.
Text-only equality with transformers, the loss over target tokens only, batched generation equal to
one example at a time, every paper method trains a step, LoRA equals PEFT's, the parameter count."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import FEAT_DIM, TASKS, random_batch, trainable_names
from vlbench.backbones import add_vis_rows
from vlbench.config import RunConfig, UserError
from vlbench.lms.causal import CausalFamily, pad
from vlbench.methods import METHODS, get_method
from vlbench.model import VLModel
from vlbench.params import count_parameters

N_VIS = 16
VOCAB = 40


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=0, pad_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def causal_vl_model(seed: int = 0) -> VLModel:
    lm = tiny_llama(seed)
    add_vis_rows(lm, N_VIS)
    return VLModel(lm, FEAT_DIM, N_VIS, pool_size=3)


def ragged_batch(batch_size: int = 4):
    """random_batch with texts and targets of different lengths (right-padded, as the collator pads)."""
    batch = random_batch(batch_size=batch_size, text_len=6, target_len=5)
    for b in range(batch_size):
        batch["attention_mask"][b, 6 - b % 3 :] = 0
        batch["input_ids"][b, 6 - b % 3 :] = 1
        batch["labels"][b, 5 - b % 2 :] = -100
    return batch


def test_text_only_pass_equals_the_plain_transformers_model():
    model = causal_vl_model()
    family = model.family
    ids = torch.randint(3, VOCAB, (3, 7))
    lengths = [7, 5, 3]
    rows = [family.embed_text(ids[b, :n]) for b, n in enumerate(lengths)]
    for left in (True, False):
        hidden, mask, _ = family.hidden_states(rows, left=left)
        ours = model.lm.get_output_embeddings()(hidden)
        for b, n in enumerate(lengths):
            plain = model.lm(input_ids=ids[b : b + 1, :n]).logits[0]
            span = slice(hidden.shape[1] - n, None) if left else slice(0, n)
            torch.testing.assert_close(ours[b, span], plain, rtol=1e-4, atol=1e-5)


def test_loss_covers_the_target_tokens_of_each_example_only():
    model = causal_vl_model()
    model.router.task = "vqa"
    batch = ragged_batch()
    losses = model(batch)
    family = model.family
    embed = model.lm.get_input_embeddings()
    for b, prompt in enumerate(family.prompts(model, batch)):
        target = batch["labels"][b][batch["labels"][b] != -100]
        sequence = torch.cat([prompt, embed(target)])[None]
        logits = model.lm(inputs_embeds=sequence).logits[0]
        predicted = logits[len(prompt) - 1 : len(prompt) - 1 + len(target)]
        expected = torch.nn.functional.cross_entropy(predicted, target)
        torch.testing.assert_close(losses[b], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_equals_one_example_at_a_time(beams):
    model = causal_vl_model(seed=2)
    batch = ragged_batch()
    together = model.generate(batch, beams, 6)
    for b in range(4):
        one = {k: v[b : b + 1] for k, v in batch.items()}
        alone = model.generate(one, beams, 6)[0]
        row = together[b, : len(alone)]
        assert torch.equal(row, alone), (b, row, alone)
    choices = model.choice_logits(batch, [5, 6])
    for b in range(4):
        one = {k: v[b : b + 1] for k, v in batch.items()}
        torch.testing.assert_close(choices[b], model.choice_logits(one, [5, 6])[0], rtol=1e-4, atol=1e-5)


PAPER_METHODS = {
    "full": None, "adapter": "single", "hyperformer": None, "compacter": "single", "lora": "single",
    "prompt": "single", "proj-only": None, "proj-ln": None, "bitfit": None, "peft": "single",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"lst"}))
def test_every_method_trains_one_step_on_the_causal_family(name):
    assert name in PAPER_METHODS, f"{name}: add it here"
    method = METHODS[name]
    options = (("config", "lora"),) if name == "peft" else ()
    cfg = RunConfig(method=name, sharing=PAPER_METHODS[name], hidden_dim=4 if method.uses_hidden_dim else None,
                    tasks=TASKS, method_options=options)  # fmt: skip
    model = causal_vl_model()
    method(cfg).apply(model, TASKS)
    model.train()
    model.router.task = "vqa"
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.loss(ragged_batch()).backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert count_parameters(model).trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_adapters_sit_after_attention_and_mlp_and_norms_are_rmsnorms():
    model = causal_vl_model()
    sites = model.sublayer_sites()
    assert [s.kind for s in sites] == ["self_attn", "ffn"] * 2 and {s.stack for s in sites} == {"decoder"}
    assert all(type(n).__name__ == "LlamaRMSNorm" for n in model.layer_norms()) and len(model.layer_norms()) == 5
    get_method("adapter")(RunConfig(method="adapter", sharing="single", hidden_dim=4)).apply(model, TASKS)
    assert {n for n in trainable_names(model) if not n.startswith(("method_modules.", "visual_embedding."))} == {
        f"lm.{n}" for n, m in model.lm.named_modules() if type(m).__name__ == "LlamaRMSNorm" for n in [f"{n}.weight"]
    }


def test_lst_is_refused_on_decoder_only_lms_in_one_line():
    with pytest.raises(UserError, match="causal LMs have no side-network support yet"):
        get_method("lst")(RunConfig(method="lst", sharing="single", hidden_dim=8)).apply(causal_vl_model(), TASKS)


def test_lora_equals_peft_lora_on_the_same_weights():
    ours = causal_vl_model()
    options = (("lora_alpha", 8), ("lora_dropout", 0.0))
    get_method("lora")(RunConfig(method="lora", sharing="single", hidden_dim=4, method_options=options)).apply(ours, TASKS)
    reference = get_peft_model(
        copy.deepcopy(causal_vl_model().lm), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    sites = ours.method_modules["lora"]
    torch.manual_seed(1)
    for i, layer in enumerate(reference.base_model.model.model.layers):
        for proj in ("q_proj", "v_proj"):
            peft_layer = getattr(layer.self_attn, proj)
            torch.nn.init.normal_(peft_layer.lora_B["default"].weight)
            pair = sites[f"decoder_{i}_self_attn_{proj}"].pairs["shared"]
            pair.lora_A.weight.data.copy_(peft_layer.lora_A["default"].weight)
            pair.lora_B.weight.data.copy_(peft_layer.lora_B["default"].weight)
    ids = torch.randint(3, VOCAB, (2, 6))
    ours.eval()
    ours.router.task = "vqa"
    with torch.no_grad():
        plain = causal_vl_model().lm(input_ids=ids).logits
        theirs = reference(input_ids=ids).logits
        mine = ours.lm(input_ids=ids).logits
    assert not torch.allclose(theirs, plain, atol=1e-3)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def llama_count(vocab: int, d: int, layers: int, heads: int, kv_heads: int, mlp: int, tied: bool) -> int:
    """A LLaMA-style LM's parameters by hand: embeddings (the head once if tied), per layer q/k/v/o,
    the SwiGLU MLP and two RMSNorms, and the final RMSNorm."""
    head_dim = d // heads
    attention = d * d * 2 + 2 * d * kv_heads * head_dim  # q and o; k and v on the KV heads
    layer = attention + 3 * d * mlp + 2 * d
    return vocab * d * (1 if tied else 2) + layers * layer + d


def test_parameter_count_of_a_saved_smollm_shaped_config(tmp_path):
    """The SmolLM2-135M shape (576 wide, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocab 49152, tied),
    saved as config.json and built on meta tensors: the LM counts as the analytic formula says."""
    config = LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True)  # fmt: skip
    config.save_pretrained(tmp_path)
    with torch.device("meta"):
        lm = LlamaForCausalLM(LlamaConfig.from_pretrained(tmp_path))
        add_vis_rows(lm, 200)
        model = VLModel(lm, 2048, 200, pool_size=6)
    counts = count_parameters(model)
    lm_only = llama_count(49152, 576, 30, 9, 3, 1536, tied=True)
    assert lm_only == 134_515_008  # SmolLM2-135M's published size
    assert counts.components["lm"]["total"] == lm_only and counts.components["vis_tokens"]["total"] == 200 * 576
    assert isinstance(model.family, CausalFamily)


def test_padding_helper_places_rows_left_or_right():
    rows = [torch.ones(2, 3), torch.ones(4, 3) * 2]
    left, left_mask = pad(rows, left=True)
    right, right_mask = pad(rows, left=False)
    assert left_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]] and right_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert left[0, :2].abs().sum() == 0 and right[0, 2:].abs().sum() == 0


def test_sweep_trains_the_tiny_causal_lm_end_to_end_and_reports_it(workdir, monkeypatch):
    import dataclasses
    import json

    from typer.testing import CliRunner

    from conftest import FAST_BACKBONE
    from test_bitfit import SMALL
    from vlbench import backbones
    from vlbench.cli import app
    from vlbench.store import Store

    quick = dataclasses.replace(backbones.BACKBONES["tiny-causal"], pretrain=FAST_BACKBONE.pretrain)
    monkeypatch.setitem(backbones.BACKBONES, "tiny-causal", quick)
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "image-text", "--lm", "causal", "--methods", "full,adapter,lora", *SMALL])
    assert result.exit_code == 0, result.output
    runs = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method != "text-only"]
    assert {r.status for r in runs} == {"done"} and {r.config["backbone"] for r in runs} == {"tiny-causal"}
    table = runner.invoke(app, ["report", "--table", "1", "--lm", "causal", "--format", "json"])
    assert table.exit_code == 0, table.output
    rows = {row["method"]: row for row in json.loads(table.stdout)}
    assert {"Full fine-tuning", "Single Adapter", "Single LoRA"} <= set(rows)
    assert all(rows["Single Adapter"][t] is not None for t in ("vqa", "gqa", "nlvr", "caption"))
    bad = runner.invoke(app, ["report", "--table", "1", "--lm", "gpt"])
    assert bad.exit_code == 2 and "--lm: unknown language model 'gpt' (choose from bart, causal, t5)" in bad.output
