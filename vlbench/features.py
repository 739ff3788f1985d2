"""Frozen CLIP grid features, computed once per image and cached for the whole sweep.

CLIP is frozen in every method, so as in the paper its features are precomputed: one float16
(N, T, F) table per backbone and dataset, saved as safetensors with the image ids in its metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlbench.backbones import Backbones


class FeatureTable:
    """image id -> (T, F) grid features, rows of one float16 tensor."""

    def __init__(self, ids: list[str], features: torch.Tensor):
        self.ids = ids
        self.features = features
        self.row = {image_id: i for i, image_id in enumerate(ids)}
        self.num_tokens, self.feat_dim = features.shape[1:]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, image_ids: Sequence[str]) -> torch.Tensor:
        """(len(image_ids), T, F) float32."""
        rows = torch.tensor([self.row[i] for i in image_ids], dtype=torch.long)
        return self.features[rows].float()


def feature_path(backbones: Backbones, cache_dir: Path, dataset_key: str) -> Path:
    return Path(cache_dir) / "features" / f"{backbones.spec.key()}-{dataset_key}.safetensors"


def image_features(
    backbones: Backbones,
    image_ids: list[str],
    render: Callable[[str], np.ndarray],
    cache_dir: Path,
    dataset_key: str,
    batch_size: int = 64,
    progress=None,
) -> FeatureTable:
    """Features of `image_ids` (rendered by `render`), from the cache or computed once and cached.

    `dataset_key` must identify the image set: a cache under that key is trusted as is."""
    path = feature_path(backbones, cache_dir, dataset_key)
    if path.exists():
        table = _load(path)
        missing = [i for i in image_ids if i not in table.row]
        if missing:
            raise ValueError(f"feature cache {path} lacks {len(missing)} requested images (e.g. {missing[0]!r})")
        return table

    ids = list(dict.fromkeys(image_ids))  # NLVR2 pairs and captions reuse images: encode each once
    task = progress.add_task(f"CLIP features {dataset_key}", total=len(ids)) if progress is not None else None
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            pixels = backbones.preprocess([render(i) for i in batch])
            chunks.append(backbones.vision(pixels).to(torch.float16))
            if task is not None:
                progress.update(task, advance=len(batch))
    features = torch.cat(chunks)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        save_file({"features": features}, tmp, metadata={"ids": json.dumps(ids)})
        os.replace(tmp, path)  # atomic: readers see no file or a whole one
    finally:
        tmp.unlink(missing_ok=True)
    return FeatureTable(ids, features)


def _load(path: Path) -> FeatureTable:
    with safe_open(path, framework="pt") as f:
        ids = json.loads(f.metadata()["ids"])
        features = f.get_tensor("features")
    return FeatureTable(ids, features)
