"""What the VL model reads as visual input, behind one seam: a `VisualSource` turns a batch's examples
into the batch entries the model reads.

    GridFeatures   precomputed CLIP grids (a feature table or store: image ids -> (n, T, F)) -> "feats"
    ClipFrames     video frame features (vlbench.tasks.video.FrameFeatures) -> "feats", "frame_mask"
    Pixels         images (rendered synthetic scenes or real image files, by the same image ids as
                   the feature stores) -> "pixels", for a model that trains its CLIP (Table 3)

`as_visual_source` wraps a feature table or frame features, so callers can hand either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from vlbench.config import UserError
from vlbench.tasks.base import Example
from vlbench.tasks.video import FrameFeatures


class VisualSource(Protocol):
    def batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """The visual entries of a batch of `examples` (CPU tensors)."""


class GridFeatures:
    def __init__(self, features):
        self.features = features  # image ids -> (n, T, F)

    def batch(self, examples):
        return {"feats": torch.stack([self.features[list(ex.image_ids)] for ex in examples])}  # (B, n_img, T, F)


class ClipFrames:
    def __init__(self, frames: FrameFeatures):
        self.frames = frames

    def batch(self, examples):
        feats, frame_mask = self.frames.clips([ex.image_ids[0] for ex in examples])  # (B, T, F), padding masked out
        return {"feats": feats, "frame_mask": frame_mask}


class Pixels:
    """Images by id -> (B, n_img, 3, S, S) CLIP-normalised pixels, read or rendered on demand."""

    def __init__(self, image: Callable[[str], np.ndarray], preprocess: Callable[[list[np.ndarray]], torch.Tensor]):
        self.image = image  # image id -> uint8 HxWx3
        self.preprocess = preprocess  # list of images -> normalised (n, 3, S, S)

    def batch(self, examples):
        return {"pixels": torch.stack([self.preprocess([self.image(i) for i in ex.image_ids]) for ex in examples])}


def read_rgb(path: Path, prefix: str = "", advice: str = "") -> np.ndarray:
    """An image file's RGB pixels (uint8 H x W x 3); a UserError `<prefix>cannot read image <path>
    (<why>)<advice>` where PIL cannot (not an image, truncated, unsupported, huge)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{prefix}cannot read image {path} ({e}){advice}") from None


def image_file_reader(files: dict[str, Path]) -> Callable[[str], np.ndarray]:
    """Image id -> its file's RGB pixels (`files`: vlbench.features.image_files of an image folder)."""
    return lambda image_id: read_rgb(files[image_id], prefix="--images: ")


def as_visual_source(visual) -> VisualSource:
    if hasattr(visual, "batch"):
        return visual
    return ClipFrames(visual) if isinstance(visual, FrameFeatures) else GridFeatures(visual)
