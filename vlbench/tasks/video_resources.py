"""What a video-text sweep builds once and shares between its runs: backbones, suite, frame features.

- Synthetic clips: each frame's CLIP image embedding (the attention-pooled, projected output that
  `encode_image` gives, as the paper's ViT-B/32 frame features are) is computed once with the tiny
  CLIP (`FrameEncoder`) and cached like image features (vlbench.features.image_features, one
  "image" per frame).
- Real data: VALUE's per-video `.npz` frame features under the data root, read lazily (no vision
  tower needed); every video's file is checked to exist, and the first one read, before the
  backbones load.
- The tiny backbones' word-level tokenizer only knows the image-text suite's words, so for video
  their vocabulary grows by the video suite's words: a tokenizer trained on both corpora, and an LM
  whose embedding rows follow it (a known word keeps its pretrained row, a new word gets a fresh one).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from vlbench.backbones import Backbones, build_tokenizer, load_backbones
from vlbench.config import RunConfig, UserError
from vlbench.features import image_features
from vlbench.tasks import Suite, build_suite
from vlbench.tasks.scenes import text_corpus
from vlbench.tasks.video import MAX_FRAMES, FrameFeatures, NpzFrames, video_text_corpus


class FrameEncoder(nn.Module):
    """CLIP's image embedding per frame: (B, 3, S, S) -> (B, 1, D), the shape image_features stores."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual  # open_clip's ModifiedResNet: stem, layers, attention pooling

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images).unsqueeze(1)


def video_resources(cfg: RunConfig, cache_dir: Path, progress) -> tuple[Backbones, Suite, FrameFeatures]:
    suite = build_suite(cfg.data, cfg.tasks, progress)  # real data: every annotation file read and checked
    if cfg.data.source == "real":
        frames = checked_frames(suite, Path(cfg.data.root))
    base = load_backbones(cfg.backbone, cache_dir, progress=progress)
    max_frames = min(MAX_FRAMES, base.spec.n_vis_tokens)  # frame k is the k-th visual token
    if cfg.data.source == "real":  # the frames come encoded: no vision tower needed
        backbones = video_backbones(base, frames.feat_dim)
        return backbones, suite, FrameFeatures(frames, frames.feat_dim, max_frames, str(frames.root))

    encoder = FrameEncoder(base.vision.visual).eval()
    backbones = dataclasses.replace(video_backbones(base, encoder.visual.output_dim), vision=encoder)
    bank = suite.bank
    frame_ids = [f for clip_id in suite.image_ids() for f in bank.frame_ids(clip_id)]
    table = image_features(backbones, frame_ids, bank.render, cache_dir, suite.fingerprint(), progress=progress)
    features = FrameFeatures(
        lambda clip_id: table[bank.frame_ids(clip_id)][:, 0], table.feat_dim, max_frames, table.name
    )
    return backbones, suite, features


def checked_frames(suite: Suite, root: Path) -> NpzFrames:
    """The frame reader of a real suite, once every video has its file and the first one reads well."""
    frames = NpzFrames(root)
    video_ids = suite.image_ids()
    missing = [v for v in video_ids if not frames.path(v).is_file()]
    if missing:
        task, split, uid, video_id = suite.first_use({missing[0]})
        raise UserError(
            f"{frames.path(video_id)}: frame features not found ({task} {split} example {uid}; "
            f"{len(missing)} of the {len(video_ids)} videos have none)"
        )
    frames(video_ids[0])  # sets the feature size every other file must match
    return frames


def video_backbones(base: Backbones, feat_dim: int) -> Backbones:
    """`base` for `feat_dim`-d frame features, under its own feature-cache key, and for a tiny
    backbone with the video suite's words in its vocabulary."""
    tokenizer, lm = base.tokenizer, base.lm
    if base.spec.pretrain:  # a tiny backbone: its tokenizer was trained on the image-text suite only
        tokenizer, lm = grow_vocabulary(base, video_text_corpus())
    spec = dataclasses.replace(
        base.spec, name=f"{base.spec.name}-video", clip={**base.spec.clip, "features": "image_embedding"}
    )
    return dataclasses.replace(base, spec=spec, tokenizer=tokenizer, lm=lm, feat_dim=feat_dim, grid_size=1)


def grow_vocabulary(base: Backbones, sentences: list[str]):
    """A tokenizer trained on the tiny backbone's text corpus plus `sentences`, and a copy of its LM
    whose embedding rows follow the new ids: a known token keeps its row (the visual tokens stay
    last), a new word gets a fresh row drawn at the scale of the trained ones."""
    p = base.spec.pretrain
    tokenizer = build_tokenizer(text_corpus(p["text_examples"], p["seed"]) + sentences, base.spec.n_vis_tokens)
    old, new = base.tokenizer.get_vocab(), tokenizer.get_vocab()
    lost = sorted(set(old) - set(new))
    if lost:  # the corpus no longer reproduces the backbone's tokenizer (a stale cache?)
        raise RuntimeError(f"the video tokenizer lost {len(lost)} of the backbone's tokens, e.g. {lost[0]!r}")
    lm = copy.deepcopy(base.lm)
    trained = lm.get_input_embeddings().weight.detach().clone()
    rows = torch.randn(len(tokenizer), trained.shape[1], generator=torch.Generator().manual_seed(p["seed"]))
    rows *= trained.std()
    for token, i in new.items():
        if token in old:
            rows[i] = trained[old[token]]
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        lm.get_input_embeddings().weight.copy_(rows)
    return tokenizer, lm
