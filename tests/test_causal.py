"""The decoder-only LM family (LLaMA lineage, OPT, GPT-2): [visual tokens][text][target] in one causal
sequence. Text-only equality with transformers, the loss over target tokens only, batched generation
equal to one example at a time, every paper method trains a step, LoRA equals PEFT's (GPT-2: a hand
computation on the q and v thirds of c_attn), BitFit on GPT-2's Conv1D biases, the parameter count."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from conftest import FEAT_DIM, TASKS, random_batch, trainable_names
from vlbench.backbones import add_vis_rows
from vlbench.config import RunConfig, UserError
from vlbench.lms import FAMILIES
from vlbench.lms.causal import CausalFamily, FusedSlice, pad
from vlbench.methods import METHODS, get_method
from vlbench.methods.bitfit import biasless_sites, lm_bias_parameters
from vlbench.model import VLModel
from vlbench.params import count_parameters

N_VIS = 16
VOCAB = 40
KINDS = ("llama", "opt", "gpt2")
TOKENS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)


def tiny_lm(kind: str = "llama", seed: int = 0):
    """A tiny random decoder-only LM: 32 wide, 2 layers, 4 heads, vocab 40, tied embeddings."""
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, **TOKENS,
        )  # fmt: skip
        return LlamaForCausalLM(config).eval()
    if kind == "opt":
        config = OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=32, max_position_embeddings=128, **TOKENS,
        )  # fmt: skip
        return OPTForCausalLM(config).eval()
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, **TOKENS)
    return GPT2LMHeadModel(config).eval()


def causal_vl_model(seed: int = 0, kind: str = "llama") -> VLModel:
    lm = tiny_lm(kind, seed)
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


@pytest.mark.parametrize("kind", KINDS)
def test_text_only_pass_equals_the_plain_transformers_model(kind):
    model = causal_vl_model(kind=kind)
    family = model.family
    ids = torch.randint(3, VOCAB, (3, 7))
    lengths = [7, 5, 3]
    rows = [family.embed_text(ids[b, :n]) for b, n in enumerate(lengths)]
    for left in (True, False):
        hidden = family.hidden_states(rows, left=left)
        ours = model.lm.get_output_embeddings()(hidden)
        for b, n in enumerate(lengths):
            plain = model.lm(input_ids=ids[b : b + 1, :n]).logits[0]
            span = slice(hidden.shape[1] - n, None) if left else slice(0, n)
            torch.testing.assert_close(ours[b, span], plain, rtol=1e-4, atol=1e-5)
        if kind == "opt":  # OPT's own positions from the mask (cumsum * mask - 1) agree on every real token
            embeds, mask = pad(rows, left)
            own = family.base(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
            torch.testing.assert_close(own[mask.bool()], hidden[mask.bool()], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_covers_the_target_tokens_of_each_example_only(kind):
    model = causal_vl_model(kind=kind)
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_equals_one_example_at_a_time(beams, kind):
    model = causal_vl_model(seed=2, kind=kind)
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


def gpt2_lora_config(folder) -> str:
    """A PEFT LoRA config for GPT-2's fused c_attn (the bundled `lora` targets q_proj/v_proj, q/v)."""
    path = folder / "gpt2-lora.json"
    path.write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}))
    return str(path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(set(METHODS) - {"lst"}))
def test_every_method_trains_one_step_on_the_causal_family(name, kind, tmp_path):
    assert name in PAPER_METHODS, f"{name}: add it here"
    method = METHODS[name]
    options = (("config", gpt2_lora_config(tmp_path) if kind == "gpt2" else "lora"),) if name == "peft" else ()
    cfg = RunConfig(method=name, sharing=PAPER_METHODS[name], hidden_dim=4 if method.uses_hidden_dim else None,
                    tasks=TASKS, method_options=options)  # fmt: skip
    model = causal_vl_model(kind=kind)
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


SITES = {  # each block's (attention, FFN) site module classes and the layer-norm class
    "llama": ("LlamaAttention", "LlamaMLP", "LlamaRMSNorm"),
    "opt": ("OPTAttention", "Linear", "LayerNorm"),  # the FFN site is fc2
    "gpt2": ("GPT2Attention", "GPT2MLP", "LayerNorm"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_sit_after_attention_and_mlp_and_the_layer_norms_are_found(kind):
    model = causal_vl_model(kind=kind)
    attention, ffn, norm = SITES[kind]
    sites = model.sublayer_sites()
    assert [s.name for s in sites] == [f"decoder.{i}.{k}" for i in range(2) for k in ("self_attn", "ffn")]
    assert [type(s.module).__name__ for s in sites] == [attention, ffn] * 2 and {s.dim for s in sites} == {32}
    if kind == "opt":
        assert all(s.module is model.lm.model.decoder.layers[s.layer].fc2 for s in sites if s.kind == "ffn")
    assert all(type(n).__name__ == norm for n in model.layer_norms()) and len(model.layer_norms()) == 5  # 2 a block, final
    get_method("adapter")(RunConfig(method="adapter", sharing="single", hidden_dim=4)).apply(model, TASKS)
    assert len(model.method_modules["adapters"]) == 4
    assert {n for n in trainable_names(model) if not n.startswith(("method_modules.", "visual_embedding."))} == {
        f"lm.{name}.{p}" for name, m in model.lm.named_modules() if type(m).__name__ == norm for p, _ in m.named_parameters()
    }


def test_lst_is_refused_on_decoder_only_lms_in_one_line():
    with pytest.raises(UserError, match="causal LMs have no side-network support yet"):
        get_method("lst")(RunConfig(method="lst", sharing="single", hidden_dim=8)).apply(causal_vl_model(), TASKS)


LORA_OPTIONS = (("lora_alpha", 8), ("lora_dropout", 0.0))


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_lora_equals_peft_lora_on_the_same_weights(kind):
    ours = causal_vl_model(kind=kind)
    get_method("lora")(RunConfig(method="lora", sharing="single", hidden_dim=4, method_options=LORA_OPTIONS)).apply(ours, TASKS)
    reference = get_peft_model(
        copy.deepcopy(causal_vl_model(kind=kind).lm),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    sites = ours.method_modules["lora"]
    torch.manual_seed(1)
    attentions = [m for _, _, site, m in CausalFamily(reference.base_model.model).sublayers() if site == "self_attn"]
    for i, attention in enumerate(attentions):
        for proj in ("q_proj", "v_proj"):
            peft_layer = getattr(attention, proj)
            torch.nn.init.normal_(peft_layer.lora_B["default"].weight)
            pair = sites[f"decoder_{i}_self_attn_{proj}"].pairs["shared"]
            pair.lora_A.weight.data.copy_(peft_layer.lora_A["default"].weight)
            pair.lora_B.weight.data.copy_(peft_layer.lora_B["default"].weight)
    ids = torch.randint(3, VOCAB, (2, 6))
    ours.eval()
    ours.router.task = "vqa"
    with torch.no_grad():
        plain = causal_vl_model(kind=kind).lm(input_ids=ids).logits
        theirs = reference(input_ids=ids).logits
        mine = ours.lm(input_ids=ids).logits
    assert not torch.allclose(theirs, plain, atol=1e-3)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_lora_on_gpt2_adapts_the_q_and_v_thirds_of_c_attn_only():
    """GPT-2's fused c_attn gives [q | k | v]: LoRA adds scaling * B(A(x)) to the q and v thirds (a
    hand computation, and the same as folding B A into those columns of W), k is bit-for-bit the
    base Conv1D's; the module tree and state dict are unchanged."""
    ours = causal_vl_model(kind="gpt2")
    plain = causal_vl_model(kind="gpt2")
    keys = set(ours.lm.state_dict())
    projections = ours.query_value_projections()
    assert [n for n, _, _ in projections] == ["decoder.0.self_attn", "decoder.1.self_attn"]
    slices = [p for _, q, v in projections for p in (q, v)]
    assert all(isinstance(p, FusedSlice) and (p.in_features, p.out_features) == (32, 32) for p in slices)
    get_method("lora")(RunConfig(method="lora", sharing="single", hidden_dim=4, method_options=LORA_OPTIONS)).apply(ours, TASKS)
    assert set(ours.lm.state_dict()) == keys and not any(isinstance(m, FusedSlice) for m in ours.lm.modules())
    sites = ours.method_modules["lora"]
    assert sorted(sites) == [f"decoder_{i}_self_attn_{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    torch.manual_seed(1)
    for pair in (site.pairs["shared"] for site in sites.values()):
        torch.nn.init.normal_(pair.lora_B.weight)
    scaling = 8 / 4
    calls = []
    for block in ours.lm.transformer.h:  # registered after LoRA's hooks: sees c_attn's final output
        block.attn.c_attn.register_forward_hook(lambda m, inputs, output: calls.append((m, inputs[0], output)))
    ours.eval()
    ours.router.task = "vqa"
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        mine = ours.lm(input_ids=ids).logits
        assert len(calls) == 2
        for i, (c_attn, x, output) in enumerate(calls):
            base = c_attn.forward(x)  # the Conv1D without hooks: x @ W + b
            q_pair, v_pair = (sites[f"decoder_{i}_self_attn_{p}"].pairs["shared"] for p in ("q_proj", "v_proj"))
            q_update = scaling * x @ q_pair.lora_A.weight.T @ q_pair.lora_B.weight.T
            v_update = scaling * x @ v_pair.lora_A.weight.T @ v_pair.lora_B.weight.T
            assert torch.equal(output[..., 32:64], base[..., 32:64])  # k: untouched
            torch.testing.assert_close(output[..., :32], base[..., :32] + q_update, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(output[..., 64:], base[..., 64:] + v_update, rtol=1e-5, atol=1e-6)
            assert q_update.abs().max() > 1e-3 and v_update.abs().max() > 1e-3
        # the same model with B A folded into the q and v columns of each c_attn weight
        for i, block in enumerate(plain.lm.transformer.h):
            for p, columns in (("q_proj", slice(0, 32)), ("v_proj", slice(64, 96))):
                pair = sites[f"decoder_{i}_self_attn_{p}"].pairs["shared"]
                block.attn.c_attn.weight[:, columns] += scaling * pair.lora_A.weight.T @ pair.lora_B.weight.T
        merged = plain.lm(input_ids=ids).logits
        untouched = causal_vl_model(kind="gpt2").lm(input_ids=ids).logits
    assert not torch.allclose(mine, untouched, atol=1e-3)
    torch.testing.assert_close(mine, merged, rtol=1e-5, atol=1e-5)


def test_bitfit_on_gpt2_trains_the_conv1d_and_layer_norm_biases_and_adds_none():
    model = causal_vl_model(kind="gpt2")
    biases = {name for name, _ in lm_bias_parameters(model.lm)}
    conv = {f"{n}.bias" for n, m in model.lm.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv) == 8 and conv <= biases  # c_attn, c_proj, c_fc, mlp.c_proj of each block
    assert biases == conv | {f"{n}.bias" for n, m in model.lm.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert biasless_sites(model) == []
    get_method("bitfit")(RunConfig(method="bitfit")).apply(model, TASKS)
    assert "bitfit" not in model.method_modules
    assert {n for n in trainable_names(model) if not n.startswith("visual_embedding.")} == {f"lm.{n}" for n in biases}


def test_gpt2_refuses_the_bundled_peft_lora_config_and_opt_350m_in_one_line():
    model = causal_vl_model(kind="gpt2")
    cfg = RunConfig(method="peft", sharing="single", hidden_dim=4, tasks=TASKS, method_options=(("config", "lora"),))
    with pytest.raises(UserError, match="--option config: lora: Target modules .* not found"):
        METHODS["peft"](cfg).apply(model, TASKS)
    config = tiny_lm("opt").config
    config.word_embed_proj_dim = 16
    with pytest.raises(UserError, match="OPT-350m"):
        VLModel(OPTForCausalLM(config), FEAT_DIM, N_VIS, pool_size=3)


def test_every_causal_model_type_is_one_registry_line_of_the_family():
    assert {t for t, family in FAMILIES.items() if family is CausalFamily} == {"llama", "qwen2", "mistral", "opt", "gpt2"}


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
