"""The tiny profile's pretraining recipe: the tokenizer, the tiny CLIP and the tiny LM it trains once
per spec. `pretrain_shipped` makes the copies that ship in the package (`vlbench backbones pretrain`);
`vlbench.backbones.load_backbones` calls `pretrain_tiny` for a spec no shipped copy or cache holds.

The components it trains (the spec, CLIP's and the LMs' builders, the tokenizer builder) are in
vlbench/backbones.py and vlbench/lms/; the corpus comes from the synthetic suite (vlbench.tasks.scenes)
and, for the LM's vocabulary, English sentences frozen in the package (vlbench/english_sentences.txt);
the optimiser and schedule are the engine's (AdamW without decay on biases and norms, warmup then
cosine decay). The LM's objective is its family's (`LMFamily.pretraining_batch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from vlbench.backbones import (
    BACKBONES,
    SHIPPED_DIR,
    BackboneSpec,
    add_vis_rows,
    build_clip,
    build_tokenizer,
    lm_from_spec,
    normalise_images,
)
from vlbench.config import UserError
from vlbench.engine import decay_groups, warmup_schedule
from vlbench.lms import family_of
from vlbench.tasks import TASKS, scenes
from vlbench.tasks.scenes import grounded_corpus, pretraining_corpus, text_corpus

log = logging.getLogger(__name__)


# bump when the tiny pretraining code changes what it produces (the recipe's numbers are in the spec)
PRETRAIN_RECIPE_VERSION = 3  # 2: the LM also reads the grounded corpus; 3: and English sentences

# plain English from the stdlib's docstrings, frozen (scripts/extract_english.py says how and why)
ENGLISH_FILE = Path(__file__).with_name("english_sentences.txt")


def english_sentences() -> list[str]:
    return ENGLISH_FILE.read_text(encoding="utf-8").splitlines()


def language_corpus(p: dict) -> list[str]:
    """What the tokenizer is trained on and the LM reads besides the grounded QA: text_corpus, plus
    the English sentences `english_repeats` times (the tiny LM's vocabulary beyond the tasks' words)."""
    return text_corpus(p["text_examples"], p["seed"]) + english_sentences() * p.get("english_repeats", 0)


def recipe_key(spec: BackboneSpec) -> str:
    """What a tiny backbone is made from: its spec, the pretraining code, the versions of the scenes
    and task generators that write its corpora (text_corpus, grounded_corpus) and its CLIP's images
    and captions, and the English sentences' digest."""
    parts = {"spec": spec.key(), "recipe": PRETRAIN_RECIPE_VERSION, "scenes": scenes.VERSION,
             "tasks": {name: task.version for name, task in TASKS.items()},
             "english": hashlib.sha256(ENGLISH_FILE.read_bytes()).hexdigest()}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def tiny_tokenizer(spec: BackboneSpec, sentences: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer a tiny spec trains on its language corpus (deterministic in the spec)."""
    if sentences is None:
        sentences = language_corpus(spec.pretrain)
    return build_tokenizer(sentences, spec.n_vis_tokens)


_TINY_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}  # what it is trained from -> the tokenizer


def shared_tiny_tokenizer(spec: BackboneSpec) -> PreTrainedTokenizerFast:
    """The tiny spec's tokenizer, trained once per process for every spec with the same pretraining
    corpus and vis tokens (tiny, tiny-t5 and tiny-causal share one; accounting counts many jobs)."""
    key = json.dumps([spec.pretrain, spec.n_vis_tokens], sort_keys=True)
    if key not in _TINY_TOKENIZERS:
        _TINY_TOKENIZERS[key] = tiny_tokenizer(spec)
    return _TINY_TOKENIZERS[key]


def text_vocab_size(spec: BackboneSpec) -> int:
    """The tiny tokenizer's vocabulary size before the vis tokens."""
    return len(shared_tiny_tokenizer(spec)) - spec.n_vis_tokens


def adamw_cosine(model: torch.nn.Module, lr: float, weight_decay: float, steps: int):
    """The engine's AdamW groups and warmup schedule, with a cosine decay (pretraining's)."""
    optimizer = torch.optim.AdamW(decay_groups(model.named_parameters(), weight_decay), lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_schedule(steps, 0.1, "cosine"))


def pretrain_tiny(spec: BackboneSpec, folder: Path, progress) -> None:
    """Pretrain the tiny backbones and write them to `folder` atomically (a temp folder, then rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    p = spec.pretrain
    try:
        # fork_rng: fixed seeds for a deterministic result without touching the caller's RNG state
        with torch.random.fork_rng(devices=[]), _progress_or_own(progress) as prog:
            torch.manual_seed(p["seed"])
            t0 = time.perf_counter()
            sentences = language_corpus(p)
            tokenizer = tiny_tokenizer(spec, sentences)
            t_tok = time.perf_counter() - t0

            t0 = time.perf_counter()
            image_size = spec.clip["vision_cfg"]["image_size"]
            n_images = p["clip_images"] + p["clip_eval_images"]
            images, captions = pretraining_corpus(n_images, image_size, p["seed"])
            clip = build_clip(spec, tokenizer)
            clip_stats = _pretrain_clip(clip, tokenizer, images, captions, p, prog)
            t_clip = time.perf_counter() - t0

            t0 = time.perf_counter()
            lm = lm_from_spec(spec, vocab_size=len(tokenizer) - spec.n_vis_tokens)
            # the tokenizer reads the language corpus; the LM also the grounded QA, repeated
            grounded = grounded_corpus(p["text_examples"], p["seed"]) * p["grounded_repeats"]
            lm_stats = _pretrain_lm(lm, tokenizer, sentences + grounded, p, prog)
            add_vis_rows(lm, spec.n_vis_tokens)  # after pretraining, as the paper adds them to the pretrained LM
            t_lm = time.perf_counter() - t0

        tmp.mkdir()
        tokenizer.save_pretrained(tmp / "tokenizer")
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, tmp / "clip.safetensors")
        lm.save_pretrained(tmp / "lm")
        meta = {
            "recipe_key": recipe_key(spec),
            "spec": dataclasses.asdict(spec),
            "vocab_size": len(tokenizer),
            "clip": clip_stats,
            "lm": lm_stats,
            "seconds": {"tokenizer": round(t_tok, 2), "clip": round(t_clip, 2), "lm": round(t_lm, 2)},
            "torch_threads": torch.get_num_threads(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.exists():
                raise
            # another process finished the same pretraining first; its result is the same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pretrain_shipped(names: list[str] | None, out: Path | None = None, progress=None) -> list[dict[str, Any]]:
    """Pretrain the named tiny backbones (default: every tiny spec) into the package's shipped folder
    (or `out`), each replacing its old copy only once it is complete."""
    tiny = [name for name, spec in BACKBONES.items() if spec.pretrain]
    unknown = [name for name in names or [] if name not in tiny]
    if unknown:
        raise UserError(f"--names: {', '.join(unknown)}: not a tiny backbone (choose from {', '.join(tiny)})")
    out = Path(out or SHIPPED_DIR)
    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar, under vlbench's own
    made = []
    for name in names or tiny:
        spec, folder, fresh = BACKBONES[name], out / name, out / f".new-{name}"
        t0 = time.perf_counter()
        shutil.rmtree(fresh, ignore_errors=True)
        pretrain_tiny(spec, fresh, progress)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(fresh, folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        made.append({"name": name, "recipe_key": recipe_key(spec), "folder": folder, "mb": size / 2**20,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
    return made


@contextmanager
def _progress_or_own(progress):
    if progress is not None:
        yield progress
        return
    from rich.progress import Progress

    with Progress(transient=True) as own:
        yield own


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    """`steps` index batches of size `batch` drawn from reshuffled passes over range(n)."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        yield order[:batch]
        order = order[batch:]


def _pretrain_clip(clip, tokenizer, images, captions, p: dict, progress) -> dict[str, Any]:
    n_train = p["clip_images"]
    pixels = torch.from_numpy(np.stack(images))  # uint8, normalised per batch to save memory
    context = clip.context_length
    text = tokenizer(captions, padding="max_length", truncation=True, max_length=context, return_tensors="pt").input_ids

    loss_fn = ClipLoss()
    opt, sched = adamw_cosine(clip, p["clip_lr"], 0.1, p["clip_steps"])
    steps = p["clip_steps"]
    gen = torch.Generator().manual_seed(p["seed"])
    task = progress.add_task("pretrain tiny CLIP", total=steps)
    losses = []
    clip.train()
    for idx in _batches(n_train, p["clip_batch"], steps, gen):
        image_features, text_features, logit_scale = clip(normalise_images(pixels[idx]), text[idx])
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))  # as open_clip's training loop does
        losses.append(loss.item())
        progress.update(task, advance=1, description=f"pretrain tiny CLIP  loss {loss.item():.3f}")
    clip.eval()

    # image->text retrieval on the held-out images: correct when the retrieved caption's text equals
    # the image's own (different scenes can share a caption, so those count as right too)
    held = range(n_train, len(images))
    with torch.no_grad():
        img = clip.encode_image(normalise_images(pixels[n_train:]), normalize=True)
        txt = clip.encode_text(text[n_train:], normalize=True)
    best = (img @ txt.T).argmax(dim=1).tolist()
    held_captions = [captions[i] for i in held]
    accuracy = float(np.mean([held_captions[b] == c for b, c in zip(best, held_captions)]))
    chance = float(np.mean([held_captions.count(c) / len(held_captions) for c in held_captions]))
    stats = {
        "final_loss": float(np.mean(losses[-20:])),
        "first_loss": losses[0],
        "logit_scale": clip.logit_scale.exp().item(),
        "retrieval_top1": accuracy,
        "retrieval_chance": chance,
        "eval_images": len(held_captions),
    }
    log.info(
        "tiny CLIP: loss %.3f -> %.3f, held-out image->text top-1 %.3f (chance %.3f, %d images)",
        stats["first_loss"], stats["final_loss"], accuracy, chance, len(held_captions),
    )
    return stats


def _pretrain_lm(lm, tokenizer, sentences, p: dict, progress) -> dict[str, Any]:
    # BART has learned positions up to a maximum length; T5's relative positions have none
    max_len = getattr(lm.config, "max_position_embeddings", None)
    ids = tokenizer(sentences, truncation=max_len is not None, max_length=max_len).input_ids
    family = family_of(lm)  # its objective: BART-style infilling, or next-token prediction
    rng = np.random.default_rng(p["seed"])
    gen = torch.Generator().manual_seed(p["seed"])

    opt, sched = adamw_cosine(lm, p["lm_lr"], 0.01, p["lm_steps"])
    steps = p["lm_steps"]
    name = f"tiny {lm.config.model_type.upper()}"
    task = progress.add_task(f"pretrain {name}", total=steps)
    losses = []
    lm.train()
    for idx in _batches(len(ids), p["lm_batch"], steps, gen):
        batch = family.pretraining_batch([ids[i] for i in idx.tolist()], tokenizer, p["mask_ratio"], rng)
        loss = lm(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        progress.update(task, advance=1, description=f"pretrain {name}  loss {loss.item():.3f}")
    lm.eval()
    stats = {"final_loss": float(np.mean(losses[-20:])), "first_loss": losses[0]}
    log.info("%s pretraining: loss %.3f -> %.3f", name, stats["first_loss"], stats["final_loss"])
    return stats
