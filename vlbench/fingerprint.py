"""What produced a run's numbers, beyond its config: the run's fingerprint.

    fingerprint(cfg) -> {part: description}      today's, from declared versions and file digests
    fingerprints(configs) -> {key: fingerprint}  many at once, each backbone's and data's files read once
    digest(parts) -> str                         the short hash the store keeps beside the parts
    scoring_only(old, new) -> bool               whether only scoring changed (re-score, do not retrain)
    first_difference(old, new) -> str            why a stored run no longer counts, in one line

A config key says what was asked for; the fingerprint says what code and files answered. Its parts:
each task's version (examples, targets, scoring glue), its metric's (metrics.VERSIONS), the
method's, the engine's (training loop, evaluation and decoding), the backbone (tiny: the recipe key,
which covers the tokenizer and the pretraining corpus; paper: a digest of the LM's weight and
tokenizer files), the visual input (tiny: the scene or clip generator's version, the features being
extracted from it by the tiny CLIP; real: the feature store's files and encoder), for real data the
data files' sizes and digests, and the caption tokenizer CIDEr will use (PTB with Java, a stand-in
without). vlbench's git commit is recorded with the run but is not a part, so an unrelated commit
retrains nothing: a change that moves numbers bumps a declared version instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from vlbench.config import RunConfig

def fingerprint(cfg: RunConfig) -> dict[str, str]:
    return fingerprints([cfg])[cfg.key()]


def fingerprints(configs: list[RunConfig]) -> dict[str, dict[str, str]]:
    """Config key -> today's fingerprint; what runs of one backbone and data share (the backbone,
    the data files, the feature store) is read once per such group, not once per run."""
    inputs: dict[tuple, dict[str, str]] = {}
    out = {}
    for cfg in configs:
        group = (cfg.backbone, cfg.data, cfg.suite, cfg.tasks)
        if group not in inputs:
            inputs[group] = _input_parts(cfg)
        out[cfg.key()] = {**_code_parts(cfg), **inputs[group]}
    return out


def _code_parts(cfg: RunConfig) -> dict[str, str]:
    """The declared versions of the code that trains and scores the run."""
    from vlbench.engine import ENGINE_VERSION
    from vlbench.baselines import BASELINES
    from vlbench.methods import METHODS
    from vlbench.metrics import VERSIONS as METRIC_VERSIONS
    from vlbench.tasks import ALL_TASKS

    parts = {}
    for name in cfg.tasks:
        parts[f"task {name}"] = f"v{ALL_TASKS[name].version}"
    for metric in dict.fromkeys(ALL_TASKS[name].metric_name for name in cfg.tasks):
        parts[f"metric {metric}"] = f"v{METRIC_VERSIONS[metric]}"
    method = METHODS.get(cfg.method)
    parts["method"] = f"{cfg.method} v{method.version if method else BASELINES[cfg.method].version}"
    detail = method.fingerprint_detail(cfg.options) if method else ""
    if detail:
        parts["method"] += f" {detail}"
    parts["engine"] = f"v{ENGINE_VERSION}"
    return parts


def _input_parts(cfg: RunConfig) -> dict[str, str]:
    """The backbone, the data and visual input, and the caption tokenizer the run reads."""
    from vlbench import backbones as backbone_registry
    from vlbench.pretrain import recipe_key
    from vlbench.tasks import ALL_TASKS

    parts = {}
    spec = backbone_registry.BACKBONES[cfg.backbone]
    if spec.pretrain:
        parts["backbone"] = f"{spec.name} recipe {recipe_key(spec)}"
    else:
        parts["backbone"] = pretrained_lm(spec)
    if cfg.data.source == "real":
        root = Path(cfg.data.root)
        parts["data"] = files_digest(p for name in cfg.tasks for p in ALL_TASKS[name].data_files(root))
        if cfg.data.features is not None:
            parts["features"] = feature_store(cfg.data.features)
        else:  # video: VALUE's frame features, <root>/<video id>.npz
            frames = sorted(root.glob("*.npz"))
            parts["features"] = f"{len(frames)} frame files {listing(frames)}"
        if cfg.data.images is not None:  # a model that trains CLIP reads the image files (names and sizes)
            images = sorted(p for p in Path(cfg.data.images).rglob("*") if p.is_file())
            parts["images"] = f"{len(images)} files {listing(images)}" + (
                f", CLIP weights {cfg.data.clip_weights}" if cfg.data.clip_weights else ""
            )
    else:
        from vlbench.tasks import scenes
        from vlbench.tasks.video import SyntheticClipBank

        bank = f"clips v{SyntheticClipBank.version}" if cfg.suite == "video-text" else f"scenes v{scenes.VERSION}"
        parts["data"] = f"synthetic {bank}"
    if any(ALL_TASKS[name].metric_name == "caption_scores" for name in cfg.tasks):
        parts["caption tokenizer"] = "ptb" if shutil.which("java") else "simple"
    return parts


def digest(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def scoring_only(old: dict[str, str] | None, new: dict[str, str]) -> bool:
    """Whether the parts that differ are only how predictions are scored (metrics, the caption
    tokenizer): then re-scoring the trained run (`sweep --rescore`) gives today's numbers."""
    if old is None:
        return False
    differing = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    return bool(differing) and all(k.startswith("metric ") or k == "caption tokenizer" for k in differing)


def first_difference(old: dict[str, str] | None, new: dict[str, str]) -> str:
    """'<part>: <old> -> <new>' for the first part that differs, in today's order."""
    if old is None:
        return "recorded before runs carried fingerprints"
    for part, value in new.items():
        if old.get(part) != value:
            return f"{part}: {old.get(part, 'absent')} -> {value}"
    extra = next(iter(set(old) - set(new)))
    return f"{extra}: {old[extra]} -> absent"


def pretrained_lm(spec) -> str:
    """The paper LM: a digest of its folder's weight and tokenizer files (or the hub name it is read by)."""
    from vlbench.backbones import LM_WEIGHTS_ENV, TOKENIZER_FILES, WEIGHT_FILES

    source = os.environ.get(LM_WEIGHTS_ENV[spec.lm_type])
    if source is None:
        return f"{spec.lm['hub']} (weights not set)"
    folder = Path(source)
    if not folder.is_dir():
        return f"hub {source} (the Hugging Face cache's copy)"
    names = sorted({*WEIGHT_FILES, *TOKENIZER_FILES} | {p.name for p in folder.glob("model-*.safetensors")})
    return f"{spec.lm['hub']} files {files_digest(folder / n for n in names if (folder / n).is_file())}"


def feature_store(path: str | Path) -> str:
    """A feature store's identity: its encoder (safetensors shards record it) and its files' names and sizes
    (hashing every feature would read the whole store)."""
    from vlbench.features import describe_encoder, open_feature_store

    store = open_feature_store(path)
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return f"{describe_encoder(getattr(store, 'encoder', None))}, {len(files)} files {listing(files)}"


def listing(files: list[Path]) -> str:
    """A digest of the files' names and sizes."""
    return hashlib.sha256("\n".join(f"{p.name} {p.stat().st_size}" for p in files).encode()).hexdigest()[:16]


_FILE_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: each file is read once per process


def files_digest(paths) -> str:
    """One digest over the files' names, sizes and contents (a missing file counts as missing: loading
    the data reports it, with its path)."""
    combined = hashlib.sha256()
    for path in sorted({Path(p).resolve() for p in paths}):
        if not path.is_file():
            combined.update(f"{path.name} missing\n".encode())
            continue
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _FILE_DIGESTS[key] = h.hexdigest()
        combined.update(f"{path.name} {stat.st_size} {_FILE_DIGESTS[key]}\n".encode())
    return combined.hexdigest()[:16]
