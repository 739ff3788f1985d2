"""RunConfig: everything that determines one training job, and its stable key.

A RunConfig is plain data. Two configs with the same content have the same key, which is how
the store recognises a job that has already run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, never as a traceback."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """'Type: first line of the message', at most `limit` characters (for a stored or shown error)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    if len(lines) > 1:
        text += " [...]"
    return text if len(text) <= limit else text[: limit - 5] + "[...]"


IMAGE_TEXT_TASKS = ("vqa", "gqa", "nlvr", "caption")
VIDEO_TEXT_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")


@dataclass(frozen=True)
class DataConfig:
    """Which examples a run sees. `source` is `synthetic` (tiny profile) or `real` (paper files)."""

    source: str = "synthetic"
    seed: int = 0
    # examples per task and split (questions for QA tasks, images for captions): how many the
    # synthetic suite makes; for real data a cap (the first n), None for all
    n_train: int | None = 1200
    n_val: int | None = 150
    n_test: int | None = 1000  # tiny: seed-to-seed std of each task's score under 1.5 points
    image_size: int = 128
    # real data: the data root (layout in vlbench.tasks) and the feature store, absolute paths
    root: str | None = None
    features: str | None = None
    # real data and a model that trains its CLIP (Table 3): the image files (a folder, ids = file stems,
    # as `features extract --images` reads them) and the CLIP weights to start from (a file or an
    # open_clip tag; the tiny backbone's own CLIP needs none)
    images: str | None = None
    clip_weights: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 32
    # per-task batch sizes (task, size), sorted; tasks not listed use batch_size (docs/paper-facts.md §4: the
    # paper's VQA 500, GQA 833, NLVR2 166, COCO 416, so tasks interleave in proportion to their data)
    task_batch_sizes: tuple[tuple[str, int], ...] = ()
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    adam_eps: float = 1e-6
    # eval batch and decoding
    eval_batch_size: int = 128
    caption_beams: int = 5
    caption_max_len: int = 20
    # "bf16": forward passes under torch.autocast (master weights and optimizer state stay fp32)
    precision: str = "fp32"


@dataclass(frozen=True)
class RunConfig:
    suite: str = "image-text"
    profile: str = "tiny"
    backbone: str = "tiny"  # key into vlbench.backbones.BACKBONES
    pool_size: int = 4  # visual grid max-pooled to pool_size x pool_size tokens per image (paper: 7 -> 6)
    tasks: tuple[str, ...] = IMAGE_TEXT_TASKS
    method: str = "full"
    sharing: str | None = None  # multiple | half | single; None for methods without per-task modules
    hidden_dim: int | None = None  # bottleneck / rank / prompt length, per method
    method_options: tuple[tuple[str, Any], ...] = ()  # extra method knobs, as sorted pairs
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["method_options"] = dict(self.method_options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        d["tasks"] = tuple(d["tasks"])
        d["method_options"] = tuple(sorted(d.get("method_options", {}).items()))
        d["data"] = DataConfig(**d["data"])
        optim = dict(d["optim"])
        optim["task_batch_sizes"] = tuple(tuple(pair) for pair in optim.get("task_batch_sizes", ()))
        d["optim"] = OptimConfig(**optim)
        return cls(**d)

    def key(self) -> str:
        """A short stable hash of the canonical JSON of the config."""
        d = self.to_dict()
        # fields added later are left out while unset, so earlier keys stay valid
        for name in ("root", "features", "images", "clip_weights"):
            if d["data"][name] is None:
                del d["data"][name]
        if not d["optim"]["task_batch_sizes"]:
            del d["optim"]["task_batch_sizes"]
        if d["optim"]["precision"] == "fp32":
            del d["optim"]["precision"]
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.method_options)

    def label(self) -> str:
        """A short human-readable name for progress bars and logs."""
        parts = [self.method]
        if self.sharing:
            parts.append(self.sharing)
        if self.hidden_dim is not None:
            parts.append(f"d{self.hidden_dim}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)
