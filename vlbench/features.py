"""Frozen CLIP grid features: computed once per image, stored on disk, read back by image id.

CLIP is frozen in every method, so as in the paper its features are precomputed. Every kind of
feature store answers the same questions (`FeatureStore`): `ids`, `num_tokens`, `feat_dim`, `len()`,
`store[image_ids] -> (n, T, F) float32` and `missing(image_ids)`.

- `FeatureTable`: in memory. The synthetic suite's features, cached as one safetensors file per
  backbone and image set (`image_features`).
- `ShardStore`: what `vlbench features extract` writes from image files: a folder of safetensors
  shards, each holding float16 `features` (n, T, F) with the image ids and the encoder's identity
  in its metadata. Shards are written atomically, so a killed extraction leaves whole shards only.
  Opening reads the shard headers alone; rows are read from the memory-mapped files on demand.
- `H5Store`: the reference code's layout, a `{img_id}/features` (T, F) dataset per image in h5
  files (one file per image or many images per file), read on demand.

`open_feature_store(path)` tells them apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import h5py
import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vlbench.backbones import Backbones, GridEncoder, load_backbones, preprocess_images
from vlbench.pretrain import recipe_key
from vlbench.config import UserError
from vlbench.files import atomic_write
from vlbench.visual import read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
H5_SUFFIXES = (".h5", ".hdf5")
SHARD_ROWS = 512  # images per shard: ~100 MB of RN101 features in float16
FLUSH_SECONDS = 60.0  # a shard is also written after this long, so a hard kill loses at most this much work
LOADER_THREADS = 8  # image decoding and resizing (PIL releases the GIL) overlaps the forward passes
MAX_OPEN_H5 = 32  # h5 files kept open at once (the per-image layout has one file per image)


class FeatureStore:
    """Grid features by image id. A subclass sets `name` (its file or folder, for error messages), `ids`,
    `index` (image id -> where its row is), `num_tokens`, `feat_dim`, and reads rows in `_read`."""

    name: str
    ids: list[str]
    index: dict
    num_tokens: int
    feat_dim: int

    def __len__(self) -> int:
        return len(self.ids)

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """The ids among `image_ids` that have no features here (each once, in order)."""
        return [i for i in dict.fromkeys(image_ids) if i not in self.index]

    def __getitem__(self, image_ids: Sequence[str]) -> torch.Tensor:
        """(len(image_ids), T, F) float32."""
        missing = self.missing(image_ids)
        if missing:
            more = f" (and {len(missing) - 1} more of the requested ids)" if len(missing) > 1 else ""
            raise UserError(f"feature store {self.name} has no features for image {missing[0]!r}{more}")
        return self._read(list(image_ids)).float()

    def _read(self, image_ids: list[str]) -> torch.Tensor:
        raise NotImplementedError


class FeatureTable(FeatureStore):
    """In memory: rows of one float16 tensor."""

    def __init__(self, ids: list[str], features: torch.Tensor, name: str = "in memory"):
        self.name = name
        self.ids = ids
        self.features = features
        self.index = {image_id: i for i, image_id in enumerate(ids)}
        self.num_tokens, self.feat_dim = features.shape[1:]

    def _read(self, image_ids: list[str]) -> torch.Tensor:
        return self.features[torch.tensor([self.index[i] for i in image_ids], dtype=torch.long)]


class ShardStore(FeatureStore):
    """A folder (or one file) of safetensors shards, memory-mapped; only the headers are read up front."""

    def __init__(self, name: str, shards: list[Path]):
        self.name = name
        self.shards = shards
        self.ids, self.index = [], {}
        self.encoder = None  # the encoder identity every shard carries (None for the synthetic cache)
        self._files = []  # one open safe_open handle per shard
        for s, shard in enumerate(shards):
            handle, ids, metadata, shape = _open_shard(shard)
            encoder = json.loads(metadata["encoder"]) if "encoder" in metadata else None
            if s == 0:
                self.encoder, (self.num_tokens, self.feat_dim) = encoder, shape[1:]
            elif encoder != self.encoder:
                raise UserError(
                    f"feature store {name}: shard {shard} holds features of {describe_encoder(encoder)} but "
                    f"{shards[0]} of {describe_encoder(self.encoder)}; a store holds one encoder's features"
                )
            elif shape[1:] != (self.num_tokens, self.feat_dim):
                raise UserError(
                    f"feature store {name}: shard {shard} holds features of shape {shape[1:]} per image, "
                    f"{shards[0]} of {(self.num_tokens, self.feat_dim)}"
                )
            for row, image_id in enumerate(ids):
                if image_id in self.index:
                    raise UserError(
                        f"feature store {name}: image {image_id!r} is in both {shards[self.index[image_id][0]]} and "
                        f"{shard} (two extractions into one folder at once?); delete one of the two shards"
                    )
                self.index[image_id] = (s, row)
            self.ids += ids
            self._files.append(handle)

    def _read(self, image_ids: list[str]) -> torch.Tensor:
        rows = []
        for image_id in image_ids:
            s, row = self.index[image_id]
            rows.append(self._files[s].get_slice("features")[row])
        return torch.stack(rows)


def _open_shard(path: Path) -> tuple:
    """A shard's open handle, ids, other metadata and features shape, or a UserError naming the shard."""
    delete = "delete it and extract again (only its images are recomputed)"
    try:
        handle = safe_open(path, framework="pt")
    except SafetensorError as e:
        raise UserError(f"feature shard {path} is truncated or corrupt ({e}); {delete}") from None
    metadata = dict(handle.metadata() or {})
    if "features" not in handle.keys() or "ids" not in metadata:
        raise UserError(f"feature shard {path} has no 'features' tensor or no 'ids' metadata; {delete}")
    ids = json.loads(metadata.pop("ids"))
    shape = tuple(handle.get_slice("features").get_shape())
    if len(shape) != 3 or shape[0] != len(ids):
        raise UserError(f"feature shard {path} holds features of shape {shape} for {len(ids)} image ids; {delete}")
    return handle, ids, metadata, shape


class H5Store(FeatureStore):
    """h5 files with a `{img_id}/features` (T, F) dataset per image, as the reference code stores them.

    Opening lists the dataset names in every file (no data is read) and checks the shape of the first;
    each read checks the shape of what it reads."""

    def __init__(self, name: str, files: list[Path]):
        self.name = name
        self.files = files
        self.ids, self.index = [], {}
        self._open = {}  # file number -> open h5py.File, at most MAX_OPEN_H5
        for k, path in enumerate(files):
            names = []
            try:
                with h5py.File(path, "r") as f:
                    f.visit(names.append)  # every group and dataset name in the file
                    ids = [n[: -len("/features")] for n in names if n.endswith("/features") and n.count("/") == 1]
                    if ids and k == 0:
                        self.num_tokens, self.feat_dim = self._shape(f, ids[0], path, expected=None)
            except OSError as e:
                raise UserError(f"h5 feature file {path} cannot be read ({e}): truncated or not HDF5") from None
            if not ids:
                raise UserError(f"h5 feature file {path} holds no '{{img_id}}/features' dataset")
            for image_id in ids:
                if image_id in self.index:
                    other = files[self.index[image_id]]
                    raise UserError(f"h5 feature files {other} and {path} both hold image {image_id!r}")
                self.index[image_id] = k
            self.ids += ids

    def _shape(self, f: h5py.File, image_id: str, path: Path, expected) -> tuple[int, int]:
        data = f[f"{image_id}/features"]
        shape = data.shape if isinstance(data, h5py.Dataset) else None
        if shape is None or len(shape) != 2 or (expected is not None and shape != expected):
            want = f"({expected[0]}, {expected[1]}) like the rest of {self.name}" if expected else "(tokens, dim)"
            raise UserError(f"h5 feature file {path}: '{image_id}/features' has shape {shape}, expected {want}")
        return shape

    def _file(self, k: int) -> h5py.File:
        if k not in self._open:
            if len(self._open) >= MAX_OPEN_H5:
                self._open.pop(next(iter(self._open))).close()  # the earliest opened
            self._open[k] = h5py.File(self.files[k], "r")
        return self._open[k]

    def _read(self, image_ids: list[str]) -> torch.Tensor:
        rows = []
        for image_id in image_ids:
            k = self.index[image_id]
            try:
                f = self._file(k)
                self._shape(f, image_id, self.files[k], expected=(self.num_tokens, self.feat_dim))
                rows.append(torch.from_numpy(np.asarray(f[f"{image_id}/features"][()], dtype=np.float32)))
            except OSError as e:
                raise UserError(f"h5 feature file {self.files[k]}: cannot read '{image_id}/features' ({e})") from None
        return torch.stack(rows)


def open_feature_store(path: str | Path) -> FeatureStore:
    """The feature store at `path`: a folder of safetensors shards (what `vlbench features extract`
    writes), a folder of .h5 files or a single .safetensors / .h5 file. Reads no features yet."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"feature store {path} does not exist")
    files = [path] if path.is_file() else _visible_files(path)
    shards = [p for p in files if p.suffix == ".safetensors"]
    h5_files = [p for p in files if p.suffix in H5_SUFFIXES]
    if shards and h5_files:
        raise UserError(f"feature store {path} mixes safetensors shards and h5 files; keep one kind per folder")
    if shards:
        return ShardStore(str(path), shards)
    if h5_files:
        return H5Store(str(path), h5_files)
    if path.is_file():
        raise UserError(f"{path} is not a feature store: expected a folder, a .safetensors or an .h5 file")
    raise UserError(f"feature store {path} is empty: no .safetensors shards or .h5 files in it")


def _visible_files(folder: Path) -> list[Path]:
    # hidden names are in-progress temporary files (and the like)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def write_shard(path: Path, ids: list[str], features: torch.Tensor, metadata: dict[str, str]) -> None:
    """(n, T, F) features as float16, their ids in the metadata; written atomically: readers see no file or a whole one."""
    tensors = {"features": features.to(torch.float16).contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"ids": json.dumps(ids), **metadata}))


# ----------------------------------------------------------------------------- the synthetic suite's cache


def feature_path(backbones: Backbones, cache_dir: Path, dataset_key: str) -> Path:
    return Path(cache_dir) / "features" / f"{recipe_key(backbones.spec)}-{dataset_key}.safetensors"


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
        missing = table.missing(image_ids)
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
    write_shard(path, ids, features, {})
    return FeatureTable(ids, features, name=str(path))


def _load(path: Path) -> FeatureTable:
    with safe_open(path, framework="pt") as f:
        ids = json.loads(f.metadata()["ids"])
        features = f.get_tensor("features")
    return FeatureTable(ids, features, name=str(path))


# ----------------------------------------------------------------------------- extraction from image files


@dataclass
class ImageEncoder:
    """A frozen CLIP vision tower that gives grid features, and what identifies it."""

    vision: nn.Module  # (B, 3, S, S) CLIP-normalised pixels -> (B, T, F)
    image_size: int  # S
    identity: dict  # model, image size, digest of the weights: in every shard, a resume must match it
    weights: str  # where the weights came from (a file, a tag, "random"), for the record


@dataclass
class ExtractSummary:
    images: int  # image files found
    already: int  # of them, already in the store
    extracted: int
    seconds: float


def load_encoder(
    model: str, weights: str | None, random_weights: bool, cache_dir: Path, progress=None
) -> ImageEncoder:
    """vlbench's tiny CLIP (`model="tiny"`), or an open_clip CLIP ResNet with `weights` (a checkpoint file
    or an open_clip pretrained tag, which open_clip downloads) or, for smoke tests, seeded random weights."""
    import open_clip

    if model == "tiny":
        if weights is not None or random_weights:
            raise UserError("--weights/--random-weights: --model tiny is vlbench's own pretrained tiny CLIP, it takes neither")
        backbones = load_backbones("tiny", cache_dir, progress)
        label = f"vlbench tiny backbones {recipe_key(backbones.spec)}"
        identity = encoder_identity("tiny", backbones.vision, backbones.image_size)
        return ImageEncoder(backbones.vision, backbones.image_size, identity, label)

    config = open_clip.get_model_config(model)
    if config is None or not isinstance(config["vision_cfg"].get("layers"), (list, tuple)):
        raise UserError(
            f"--model: {model!r} is neither tiny nor an open_clip CLIP ResNet (RN50, RN101, ...), which grid features need"
        )
    if random_weights == (weights is not None):
        raise UserError(
            f"--weights: give the weights of {model}, a checkpoint file or an open_clip pretrained tag such as 'openai' "
            "(or --random-weights instead, for a smoke test: its features mean nothing)"
        )
    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clip = open_clip.create_model(model, pretrained=None)
        label = "random (seed 0)"
    else:
        tags = open_clip.list_pretrained_tags_by_model(model)
        if not Path(weights).is_file() and weights not in tags:
            raise UserError(f"--weights: {weights!r} is neither a file nor a pretrained tag of {model} ({', '.join(tags)})")
        try:
            clip = open_clip.create_model(model, pretrained=weights)
        except Exception as e:  # a file of the wrong kind or shapes, a failed download: open_clip raises many kinds
            raise UserError(f"--weights: cannot load {weights} into open_clip {model}: {e}") from None
        label = str(Path(weights).resolve()) if Path(weights).is_file() else f"open_clip {model} {weights}"
    vision = GridEncoder(clip.visual).eval().requires_grad_(False)
    return ImageEncoder(vision, clip.visual.image_size, encoder_identity(model, vision, clip.visual.image_size), label)


def encoder_identity(model: str, vision: nn.Module, image_size: int) -> dict:
    # a digest of the weights themselves: the same weights from a file or a tag resume the same store
    digest = hashlib.sha256()
    for name, tensor in sorted(vision.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return {"model": model, "image_size": image_size, "weights_sha256": digest.hexdigest()[:16]}


def describe_encoder(identity: dict | None) -> str:
    if identity is None:
        return "an unrecorded encoder"
    return f"{identity['model']} at {identity['image_size']}px with weights {identity['weights_sha256']}"


def image_files(root: Path) -> dict[str, Path]:
    """Image id -> file for every .jpg/.jpeg/.png under `root` and its subfolders (hidden names skipped).

    The id is the file name without extension, as VL-T5 names images (COCO_val2014_000000123456,
    GQA 2354786, NLVR2 dev-850-0-img0), so two files with the same stem are an error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--images: {root} is not a folder")
    files = {}
    for path in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if path.suffix.lower() not in IMAGE_SUFFIXES or hidden or not path.is_file():
            continue
        if path.stem in files:
            raise UserError(
                f"--images: {files[path.stem]} and {path} have the same image id {path.stem!r} (the file name without extension)"
            )
        files[path.stem] = path
    if not files:
        raise UserError(f"--images: no .jpg, .jpeg or .png files in {root} or its subfolders")
    return dict(sorted(files.items()))


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image file -> (1, 3, size, size) CLIP input: RGB, bicubic resize to size x size (no aspect keep)."""
    rgb = read_rgb(path, advice="; fix or remove it and run again (finished images are kept)")
    return preprocess_images([rgb], size)


class ShardWriter:
    """Collects extracted rows and writes them as shards of SHARD_ROWS images (or FLUSH_SECONDS of work)."""

    def __init__(self, folder: Path, encoder: ImageEncoder):
        self.folder = folder
        self.metadata = {"encoder": json.dumps(encoder.identity, sort_keys=True), "weights": encoder.weights}
        self.ids, self.chunks = [], []
        self.last_write = time.monotonic()

    def add(self, ids: list[str], features: torch.Tensor) -> None:
        self.ids += ids
        self.chunks.append(features)
        if len(self.ids) >= SHARD_ROWS or time.monotonic() - self.last_write >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.ids:
            # names sort in writing order; the pid keeps two writers' names apart
            name = f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
            write_shard(self.folder / name, self.ids, torch.cat(self.chunks), self.metadata)
        self.ids, self.chunks, self.last_write = [], [], time.monotonic()


def stored_ids(out: Path, encoder: ImageEncoder) -> set[str]:
    """Ids already in the store folder `out`, which must hold this encoder's features (or nothing yet)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; a feature store is a folder")
    if not out.exists() or not any(p.suffix in (".safetensors", *H5_SUFFIXES) for p in _visible_files(out)):
        return set()
    store = open_feature_store(out)
    if not isinstance(store, ShardStore):
        raise UserError(f"--out: {out} holds h5 features; extract into another folder")
    if store.encoder != encoder.identity:
        raise UserError(
            f"--out: {out} holds features of {describe_encoder(store.encoder)}, not of {describe_encoder(encoder.identity)} "
            "(another model or other weights); extract into another folder"
        )
    return set(store.ids)


def extract_features(
    files: dict[str, Path], out: Path, encoder: ImageEncoder, batch_size: int = 32, progress=None
) -> ExtractSummary:
    """Grid features of the image `files` (id -> path, see `image_files`) into the store folder `out`, in shards.

    Images already in the store are skipped. On an error or Ctrl-C the finished batches are written
    before the exception propagates; a hard kill loses at most the unwritten shard (FLUSH_SECONDS)."""
    started = time.perf_counter()
    if batch_size < 1:
        raise UserError(f"--batch-size: must be at least 1, got {batch_size}")
    out = Path(out)
    done = stored_ids(out, encoder)
    todo = [i for i in files if i not in done]
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vision = encoder.vision.to(device)
    writer = ShardWriter(out, encoder)
    task = None
    if progress is not None:
        description = f"CLIP features {encoder.identity['model']}"
        task = progress.add_task(description, total=len(files), completed=len(files) - len(todo))
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(LOADER_THREADS) as pool:

        def submit(batch: list[str]) -> list:
            return [pool.submit(load_image, files[i], encoder.image_size) for i in batch]

        pending = submit(batches[0]) if batches else []
        try:
            for k, batch in enumerate(batches):
                pixels = torch.cat([future.result() for future in pending])
                pending = submit(batches[k + 1]) if k + 1 < len(batches) else []  # decoded while the model runs
                with torch.inference_mode():
                    features = vision(pixels.to(device)).to(torch.float16).cpu()
                writer.add(batch, features)
                if task is not None:
                    progress.update(task, advance=len(batch))
        finally:
            writer.flush()  # what finished is kept, so a rerun starts after it
    return ExtractSummary(len(files), len(files) - len(todo), len(todo), time.perf_counter() - started)


def extract_folder(
    images: Path,
    out: Path,
    model: str,
    weights: str | None,
    random_weights: bool,
    batch_size: int,
    cache_dir: Path,
    console,
) -> ExtractSummary:
    """`vlbench features extract`: find the images, load the encoder, extract under a progress display."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    files = image_files(images)  # before loading (or downloading) any model
    with Progress(*columns, console=console) as progress:
        encoder = load_encoder(model, weights, random_weights, cache_dir, progress)
        return extract_features(files, out, encoder, batch_size, progress)
