import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import time

import numpy as np
import pytest
import torch

import vlbench.backbones as backbones_mod
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
    assert (tiny.feat_dim, tiny.grid_size) == (256, 4)
    assert grid.shape == (4, tiny.grid_size**2, tiny.feat_dim)
    assert not tiny.vision.training
    assert not any(p.requires_grad for p in tiny.vision.parameters())


def test_cache_is_reused(tiny, cache_dir, monkeypatch):
    def no_pretraining(*args):
        raise AssertionError("pretrained again instead of loading the cache")

    monkeypatch.setattr(backbones_mod, "_pretrain_into", no_pretraining)
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

    monkeypatch.setattr(backbones_mod, "_pretrain_lm", crash)
    with pytest.raises(RuntimeError, match="killed"):
        load_backbones(FAST, tmp_path)
    assert list((tmp_path / "backbones").iterdir()) == []


def test_unavailable_backbones_are_user_errors(tmp_path):
    with pytest.raises(UserError):
        load_backbones("paper", tmp_path)
    with pytest.raises(UserError):
        load_backbones("huge", tmp_path)


def test_paper_lm_parameter_count():
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
    assert len(table) == 5 and (table.num_tokens, table.feat_dim) == (16, 256)
    got = table[["img3", "img0"]]
    assert got.shape == (2, 16, 256) and got.dtype == torch.float32
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
