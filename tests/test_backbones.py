import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

import vlbench.backbones as backbones_mod
import vlbench.pretrain as pretrain
import vlbench.compat  # noqa: F401
from transformers import BartConfig, BartForConditionalGeneration
from vlbench.backbones import (
    BACKBONES,
    BART_BASE,
    add_vis_rows,
    build_lm_from_config,
    load_backbones,
)
from vlbench.config import UserError
from vlbench.features import feature_path, image_features
from vlbench.tasks.scenes import pretraining_corpus, text_corpus

from conftest import FAST_BACKBONE as FAST

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return load_backbones(FAST, cache_dir)


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_tokenizer_round_trip_and_vis_tokens(tiny):
    tok = tiny.tokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)  # BART's ids
    for s in dict.fromkeys(text_corpus(50, 3)):
        ids = tok(s).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids, s
        assert tok.decode(ids, skip_special_tokens=True) == s
    vis = tok.convert_tokens_to_ids([f"<vis_extra_id_{k}>" for k in range(FAST.n_vis_tokens)])
    assert vis == list(range(len(tok) - FAST.n_vis_tokens, len(tok)))
    assert tok("<vis_extra_id_3> a red circle").input_ids[1] == vis[3]
    assert tiny.lm.get_input_embeddings().num_embeddings == len(tok) == tiny.lm.config.vocab_size


def test_grid_features(tiny):
    images, _ = pretraining_corpus(3, tiny.image_size, seed=5)
    images.append(np.zeros((50, 70, 3), dtype=np.uint8))  # any size is resized to the model's
    pixels = tiny.preprocess(images)
    assert pixels.shape == (4, 3, tiny.image_size, tiny.image_size)
    with torch.no_grad():
        grid = tiny.vision(pixels)
    assert (tiny.feat_dim, tiny.grid_size) == (128, 4)
    assert grid.shape == (4, tiny.grid_size**2, tiny.feat_dim)
    assert not tiny.vision.training
    assert not any(p.requires_grad for p in tiny.vision.parameters())


def test_cache_is_reused(tiny, cache_dir, monkeypatch):
    def no_pretraining(*args):
        raise AssertionError("pretrained again instead of loading the cache")

    monkeypatch.setattr(pretrain, "pretrain_tiny", no_pretraining)
    start = time.perf_counter()
    again = load_backbones(FAST, cache_dir)
    assert time.perf_counter() - start < 2
    for a, b in [(tiny.vision, again.vision), (tiny.lm, again.lm)]:
        sa, sb = state(a), state(b)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert again.meta["clip"]["eval_images"] == 32


def test_pretraining_is_deterministic(tiny, tmp_path):
    other = load_backbones(FAST, tmp_path)
    sa, sb = state(tiny.lm), state(other.lm)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tiny.meta["clip"]["final_loss"] == other.meta["clip"]["final_loss"]


def test_failed_pretraining_leaves_no_cache(tmp_path, monkeypatch):
    def crash(*args):
        raise RuntimeError("killed")

    monkeypatch.setattr(pretrain, "_pretrain_lm", crash)
    with pytest.raises(RuntimeError, match="killed"):
        load_backbones(FAST, tmp_path)
    assert list((tmp_path / "backbones").iterdir()) == []


def test_the_package_ships_every_tiny_backbone_by_todays_recipe():
    """A change to the recipe (spec, pretraining code, scene or task versions) fails here until
    `vlbench backbones pretrain` regenerates the shipped copies; otherwise every fresh clone would
    pretrain them again."""
    tiny = {name: spec for name, spec in BACKBONES.items() if spec.pretrain}
    assert set(tiny) == {"tiny", "tiny-t5", "tiny-causal"}
    for name, spec in tiny.items():
        assert backbones_mod.shipped_backbones(name, pretrain.recipe_key(spec)) is not None, name
    size = sum(f.stat().st_size for f in backbones_mod.SHIPPED_DIR.rglob("*") if f.is_file())
    assert size <= 25 * 2**20  # the limit for backbones inside the package


def test_the_english_sentences_follow_their_extraction_recipe():
    """The frozen extract (scripts/extract_english.py) is what its recipe keeps: unique sentences of
    5-30 plain lower-case words and commas (the script's own filter, without its word-count cut, keeps
    every line)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "extract_english.py"
    module_spec = importlib.util.spec_from_file_location("extract_english", path)
    extract = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(extract)
    lines = pretrain.english_sentences()
    assert len(lines) == 5472
    assert extract.sentences(lines, 1) == lines
    assert len({w for s in lines for w in s.split()}) == 2923


def test_the_english_sentences_are_in_the_recipe_key(tmp_path, monkeypatch):
    """The shipped backbones are made from the English extract: a changed extract is another recipe,
    and a spec reads it only when it asks for it (the tests' fast spec does not)."""
    spec = BACKBONES["tiny"]
    assert spec.pretrain["english_repeats"] == 3 and "english_repeats" not in FAST.pretrain
    key = pretrain.recipe_key(spec)
    lines = pretrain.english_sentences()
    assert pretrain.language_corpus(spec.pretrain)[-len(lines) :] == lines
    assert pretrain.language_corpus(FAST.pretrain) == text_corpus(FAST.pretrain["text_examples"], 0)
    edited = tmp_path / "english_sentences.txt"
    edited.write_text("\n".join(lines[1:]) + "\n")
    monkeypatch.setattr(pretrain, "ENGLISH_FILE", edited)
    assert pretrain.recipe_key(spec) != key


def test_a_shipped_copy_is_loaded_and_a_stale_one_pretrained_afresh(tiny, cache_dir, tmp_path, monkeypatch, caplog):
    import shutil

    shipped, empty_cache = tmp_path / "shipped", tmp_path / "cache"
    key = pretrain.recipe_key(FAST)
    shutil.copytree(cache_dir / "backbones" / f"tiny-{key}", shipped / "tiny")
    monkeypatch.setattr(backbones_mod, "SHIPPED_DIR", shipped)
    calls = []
    monkeypatch.setattr(pretrain, "pretrain_tiny", lambda *args: calls.append(args) or 1 / 0)

    loaded = load_backbones(FAST, empty_cache)
    assert calls == [] and not empty_cache.exists()  # read in place: nothing pretrained, nothing cached
    sa, sb = state(tiny.lm), state(loaded.lm)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    meta = json.loads((shipped / "tiny" / "meta.json").read_text())
    (shipped / "tiny" / "meta.json").write_text(json.dumps(dict(meta, recipe_key="0" * 16)))
    with pytest.raises(ZeroDivisionError):
        load_backbones(FAST, empty_cache)
    assert calls[0][1] == empty_cache / "backbones" / f"tiny-{key}"  # pretrains into the cache instead
    assert f"shipped tiny backbones were made by recipe {'0' * 16}, not today's {key}" in caplog.text


def test_backbones_pretrain_replaces_the_shipped_copy(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vlbench.cli import app

    monkeypatch.setitem(BACKBONES, "tiny", FAST)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "meta.json").write_text('{"recipe_key": "old"}')
    result = CliRunner().invoke(app, ["backbones", "pretrain", "--names", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"tiny: recipe {pretrain.recipe_key(FAST)}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no staging folder left behind
    monkeypatch.setattr(backbones_mod, "SHIPPED_DIR", tmp_path)
    monkeypatch.setattr(pretrain, "pretrain_tiny", lambda *args: 1 / 0)
    assert load_backbones(FAST, tmp_path / "cache").meta["recipe_key"] == pretrain.recipe_key(FAST)


def test_unavailable_backbones_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("VLBENCH_BART_WEIGHTS", raising=False)
    with pytest.raises(UserError, match="set VLBENCH_BART_WEIGHTS"):
        load_backbones("paper", tmp_path)
    with pytest.raises(UserError):
        load_backbones("huge", tmp_path)


def test_paper_lm_parameter_count():
    with torch.device("meta"):  # shapes only: random init of BART-base costs seconds
        bare = BartForConditionalGeneration(BartConfig(**BART_BASE))
        assert sum(p.numel() for p in bare.parameters()) == 139_420_416  # tied lm_head counted once
        add_vis_rows(bare, 200)
        assert sum(p.numel() for p in bare.parameters()) == 139_420_416 + 200 * 768
        lm = build_lm_from_config(BACKBONES["paper"])
    assert sum(p.numel() for p in lm.parameters()) == 139_420_416 + 200 * 768
    assert lm.lm_head.weight is lm.get_input_embeddings().weight


def test_feature_cache(tiny, tmp_path):
    images, _ = pretraining_corpus(5, tiny.image_size, seed=7)
    bank = {f"img{i}": im for i, im in enumerate(images)}
    ids = ["img0", "img1", "img2", "img3", "img4", "img1"]  # repeats are encoded once
    table = image_features(tiny, ids, bank.__getitem__, tmp_path, "unit", batch_size=2)
    assert len(table) == 5 and (table.num_tokens, table.feat_dim) == (16, 128)
    got = table[["img3", "img0"]]
    assert got.shape == (2, 16, 128) and got.dtype == torch.float32
    with torch.no_grad():
        direct = tiny.vision(tiny.preprocess([bank["img3"]]))[0]
    torch.testing.assert_close(got[0], direct, atol=1e-2, rtol=1e-2)  # float16 storage
    assert feature_path(tiny, tmp_path, "unit").exists()
    assert [p.name for p in (tmp_path / "features").iterdir()] == [feature_path(tiny, tmp_path, "unit").name]

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("recomputed features instead of loading the cache")

    cached = image_features(dataclasses.replace(tiny, vision=Broken()), ids, bank.__getitem__, tmp_path, "unit")
    assert torch.equal(cached[ids], table[ids])
    with pytest.raises(ValueError, match="lacks 1"):
        image_features(tiny, ids + ["img9"], bank.__getitem__, tmp_path, "unit")


# ---- the paper profiles' language model, from a local save_pretrained folder --------------------


def trained_tokenizer(lm_type: str):
    """A BART (byte-level BPE) or T5 (unigram, no <s>) tokenizer trained in a moment on the suite's text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartTokenizer, T5Tokenizer

    sentences = text_corpus(50, 0)
    if lm_type == "bart":
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        bpe.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet,
                                                               special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
        model = json.loads(bpe.to_str())["model"]
        return BartTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(sentences, trainers.UnigramTrainer(vocab_size=150, unk_token="<unk>",
                                                                  special_tokens=["<pad>", "</s>", "<unk>"]))
    return T5Tokenizer(vocab=[tuple(v) for v in json.loads(unigram.to_str())["model"]["vocab"]], extra_ids=10)


SMALL_LM = {
    "bart": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256),
    # T5's table is longer than its tokenizer (t5-base: 32128 rows, 32100 tokens)
    "t5": dict(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2, decoder_start_token_id=0),
    # a LLaMA-style decoder-only LM with a byte-level BPE tokenizer (BART's, as any causal LM may bring its own)
    "causal": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                   bos_token_id=0, pad_token_id=1, eos_token_id=2, tie_word_embeddings=True),
}


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory):
    """lm type -> (save_pretrained folder of a random small LM + tokenizer, its state dict, tokenizer length)."""
    from transformers import T5Config, T5ForConditionalGeneration

    folders = {}
    from transformers import LlamaConfig, LlamaForCausalLM

    for lm_type, (config_class, model_class) in {"bart": (BartConfig, BartForConditionalGeneration),
                                                 "t5": (T5Config, T5ForConditionalGeneration),
                                                 "causal": (LlamaConfig, LlamaForCausalLM)}.items():
        tokenizer = trained_tokenizer("t5" if lm_type == "t5" else "bart")
        vocab_size = len(tokenizer) + (5 if lm_type == "t5" else 0)
        torch.manual_seed(0)
        lm = model_class(config_class(vocab_size=vocab_size, **SMALL_LM[lm_type]))
        folder = tmp_path_factory.mktemp(f"{lm_type}-base")
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[lm_type] = (folder, state(lm), len(tokenizer))
    return folders


@pytest.mark.parametrize("name", ["paper", "paper-t5", "paper-video", "paper-causal"])
def test_paper_lm_loads_from_a_local_folder(name, lm_folders, tmp_path, monkeypatch):
    from vlbench.config import RunConfig
    from vlbench.sweep import build_model

    spec = BACKBONES[name]
    folder, saved, n_tokens = lm_folders[spec.lm_type]
    monkeypatch.setenv(backbones_mod.LM_WEIGHTS_ENV[spec.lm_type], str(folder))
    loaded = load_backbones(name, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing cached: the folder is the source

    # every weight as saved; the embedding table grew by the 200 vis rows after the model's vocabulary
    got = state(loaded.lm)
    assert got.keys() == saved.keys()
    for key, value in saved.items():
        if got[key].shape != value.shape:  # embeddings, lm_head, BART's final_logits_bias
            dim = [a == b for a, b in zip(got[key].shape, value.shape)].index(False)
            assert got[key].shape[dim] == value.shape[dim] + 200, key
            assert torch.equal(got[key].narrow(dim, 0, value.shape[dim]), value), key
        else:
            assert torch.equal(got[key], value), key
    embeddings = {"t5": "shared.weight", "bart": "model.shared.weight", "causal": "model.embed_tokens.weight"}
    vocab_size = saved[embeddings[spec.lm_type]].shape[0]
    assert loaded.lm.get_input_embeddings().num_embeddings == loaded.lm.config.vocab_size == vocab_size + 200
    assert all(p.dtype == torch.float32 for p in loaded.lm.parameters()) and not loaded.lm.training
    tok = loaded.tokenizer
    assert len(tok) == n_tokens + 200
    assert tok.convert_tokens_to_ids("<vis_extra_id_199>") == n_tokens + 199

    # what training on precomputed features needs, as the sweep builds a run's model
    feat_dim = 512 if name == "paper-video" else 2048
    assert (loaded.feat_dim, loaded.spec.n_vis_tokens, loaded.vision) == (feat_dim, 200, None)
    cfg = RunConfig(profile="paper", backbone=name, pool_size=6, method="adapter", sharing="single", hidden_dim=4)
    model = build_model(cfg, loaded)
    text = tok(["vqa: what color is the circle?", "gqa: is there a red square?"], padding=True, return_tensors="pt")
    labels = tok(["red", "yes"], padding=True, return_tensors="pt").input_ids
    batch = {
        "input_ids": text.input_ids,
        "attention_mask": text.attention_mask,
        "feats": torch.randn(2, 1, 49, feat_dim),
        "labels": labels.masked_fill(labels == tok.pad_token_id, -100),
        "weights": torch.ones(2),
    }
    model.router.task = "vqa"
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.visual_embedding.feat_embedding[0].weight.grad is not None
    assert model.generate(batch, num_beams=1, max_new_tokens=3).shape[0] == 2


def test_paper_lm_folder_problems_are_one_line_errors(lm_folders, tmp_path):
    import shutil

    bart, _, _ = lm_folders["bart"]

    def error(source, name="paper"):
        with pytest.raises(UserError) as info:
            load_backbones(name, tmp_path, lm_weights=source)
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "no such folder" in error(tmp_path / "nowhere")
    assert "no such folder, and cannot load it as a hub name" in error("vlbench-tests/no-such-model")  # offline
    assert "holds a bart model; backbone 'paper-t5' needs t5" in error(bart, "paper-t5")
    for missing, expected in [("config.json", "no config.json"), ("model.safetensors", "no model weights"),
                              ("tokenizer.json", "no tokenizer files")]:
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(bart, broken)
        (broken / missing).unlink()
        if missing == "tokenizer.json":
            (broken / "tokenizer_config.json").unlink()
        message = error(broken)
        assert message.startswith(str(broken)) and expected in message, message
    truncated = tmp_path / "truncated"
    shutil.copytree(bart, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert error(truncated).startswith(f"{truncated}: cannot load the model and tokenizer in this folder")


def test_components_do_not_import_the_recipe_or_the_tasks():
    """backbones.py (components) loads without the pretraining recipe or the synthetic suite; the
    recipe imports them (it is called only to fill a missing cache)."""
    import subprocess
    import sys

    code = "import sys, vlbench.backbones; print(sorted(m for m in sys.modules if m.startswith('vlbench')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "vlbench.pretrain" not in loaded and "vlbench.tasks" not in loaded, loaded


def test_pretraining_uses_the_engines_optimizer_groups_and_schedule():
    from vlbench.engine import decay_groups, warmup_schedule

    lm = build_lm_from_config(BACKBONES["tiny"], vocab_size=40)
    optimizer, scheduler = pretrain.adamw_cosine(lm, 1e-3, 0.01, steps=100)
    expected = decay_groups(lm.named_parameters(), 0.01)
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == [[id(p) for p in g["params"]] for g in expected]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    factor = warmup_schedule(100, 0.1, "cosine")
    assert factor(0) == 0.1 and factor(9) == 1.0 and factor(10) == 1.0 and abs(factor(55) - 0.5) < 1e-12 and factor(100) < 1e-3


def bare_causal_tokenizer(style: str):
    """A tokenizer as GPT-2's (one <|endoftext|> token for BOS and EOS, nothing added, no pad) or
    LLaMA's (<s> added in front, no </s> at the end, no pad) come: what a real decoder-only LM brings."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] if style == "gpt2" else ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token=None if style == "gpt2" else "<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(text_corpus(50, 0), trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials))  # fmt: skip
    if style == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=specials[0], eos_token=specials[0])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_a_decoder_only_lms_own_tokenizer_pads_and_ends_every_target_with_eos(style, tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from vlbench.config import RunConfig
    from vlbench.data import pad
    from vlbench.sweep import build_model

    tokenizer = bare_causal_tokenizer(style)
    assert tokenizer.pad_token is None
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    if style == "gpt2":
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, bos_token_id=bos, eos_token_id=eos))
    else:
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **dict(SMALL_LM["causal"], bos_token_id=bos, pad_token_id=None, eos_token_id=eos)))
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    monkeypatch.setenv("VLBENCH_CAUSAL_WEIGHTS", str(tmp_path / "lm"))

    loaded = load_backbones("paper-causal", tmp_path / "cache")
    tok = loaded.tokenizer
    assert tok.pad_token == tok.eos_token and tok.eos_token_id == eos
    for ids in tok(["red", "vqa: what color is the circle?"])["input_ids"]:
        assert ids[0] == bos and ids[-1] == eos and eos not in ids[1:-1]
    assert tok("yes", add_special_tokens=False)["input_ids"][-1] != eos

    cfg = RunConfig(profile="paper", backbone="paper-causal", pool_size=6, method="adapter", sharing="single", hidden_dim=4)
    model = build_model(cfg, loaded)
    input_ids, attention_mask = pad([torch.tensor(x) for x in tok(["vqa: what color is the circle?", "gqa: is it red?"])["input_ids"]], tok.pad_token_id)
    labels, label_mask = pad([torch.tensor(x) for x in tok(["red", "no"])["input_ids"]], -100)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "feats": torch.randn(2, 1, 49, 2048),
             "labels": labels.masked_fill(label_mask == 0, -100), "weights": torch.ones(2)}  # fmt: skip
    model.router.task = "vqa"
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.generate(batch, num_beams=1, max_new_tokens=3).shape[0] == 2


def test_a_decoder_only_tokenizer_without_eos_is_refused(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = bare_causal_tokenizer("llama")
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>", unk_token="<unk>")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(bare), **SMALL_LM["causal"])).save_pretrained(tmp_path / "lm")
    bare.save_pretrained(tmp_path / "lm")
    monkeypatch.setenv("VLBENCH_CAUSAL_WEIGHTS", str(tmp_path / "lm"))
    with pytest.raises(UserError, match="the tokenizer has no EOS token"):
        load_backbones("paper-causal", tmp_path / "cache")
