"""A run's training checkpoint: written atomically, read without unpickling anything.

Layout of a checkpoint folder (e.g. runs/<sweep>/<key>/checkpoint):

    latest.json                 the manifest, written last: which snapshot is current, and the size
                                and SHA-256 of each of its files
    snapshot-00000123-<token>/   the snapshot (global step, a random token)
        model.safetensors       the trainable parameters
        state.safetensors       every other tensor (optimizer moments and steps, RNG states)
        state.json              everything else, with {"__tensor__": key} where a tensor of
                                state.safetensors sits, tuples and non-string dict keys tagged

A save writes a new snapshot into a temporary folder, fsyncs its files, renames it into place and
only then replaces latest.json (itself written to a temporary file, fsynced and renamed), then
removes the older snapshots. A process killed at any point leaves latest.json naming a complete
snapshot (the previous or the new one) or, before the first save completed, no checkpoint.

Loading checks the manifest's sizes and hashes and reads only safetensors and JSON; any problem is
a CheckpointError naming the file. What the state means (model, optimizers, RNGs, position) is the
engine's business (`vlbench.engine`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = 1
MANIFEST = "latest.json"
MODEL_FILE = "model.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
_TMP_PREFIX = ".tmp-"
_SNAPSHOT_PREFIX = "snapshot-"


@dataclass(frozen=True)
class CheckpointPolicy:
    folder: Path  # where the run's checkpoint lives (e.g. runs/<sweep>/<key>/checkpoint)
    every_steps: int = 0  # also every N optimizer steps (0: only at epoch ends and on a stop request)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        if self.every_steps < 0:
            raise ValueError(f"CheckpointPolicy.every_steps must be >= 0, not {self.every_steps}")


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: the message names the file and the problem."""


def has_checkpoint(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint folder (after the run finished); a missing folder is fine."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    (folder / MANIFEST).unlink(missing_ok=True)  # first: a half-removed checkpoint is no checkpoint
    _remove_ours(folder, keep=())
    with contextlib.suppress(OSError):  # only if nothing but ours was there
        folder.rmdir()


def _is_ours(path: Path) -> bool:
    return path.name.startswith((_TMP_PREFIX, _SNAPSHOT_PREFIX)) or path.name == MANIFEST


def _remove_ours(folder: Path, keep: tuple[str, ...]) -> None:
    for path in folder.iterdir():
        if path.name in keep or not _is_ours(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(folder: Path, params: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write one snapshot: `params` (name -> tensor) and `state` (JSON-able plus tensors, tuples,
    int-keyed dicts anywhere inside); returns the snapshot folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode(state, tensors, "")
    step = int(state.get("position", {}).get("step", 0)) if isinstance(state.get("position"), dict) else 0
    name = f"{_SNAPSHOT_PREFIX}{step:08d}-{uuid.uuid4().hex[:8]}"
    tmp = folder / f"{_TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        save_file({k: _cpu(v) for k, v in params.items()}, str(tmp / MODEL_FILE))
        save_file({k: _cpu(v) for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(encoded, allow_nan=True))
        files = {}
        for f in (MODEL_FILE, TENSORS_FILE, STATE_FILE):
            _fsync(tmp / f)
            files[f] = {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)}
        _fsync_dir(tmp)
        os.replace(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder)
    manifest = {"format": FORMAT, "snapshot": name, "files": files}
    tmp_manifest = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex[:8]}-{MANIFEST}"
    tmp_manifest.write_text(json.dumps(manifest, indent=1))
    _fsync(tmp_manifest)
    os.replace(tmp_manifest, folder / MANIFEST)
    _fsync_dir(folder)
    _remove_ours(folder, keep=(name, MANIFEST))  # older snapshots and what killed saves left behind
    return folder / name


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(params, state, snapshot folder) of the current snapshot, every file checked against the manifest."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or not {"format", "snapshot", "files"} <= set(manifest):
        raise CheckpointError(f"{manifest_path}: not a vlbench checkpoint manifest (needs format, snapshot, files)")
    if manifest["format"] != FORMAT:
        raise CheckpointError(f"{manifest_path}: checkpoint format {manifest['format']!r}, this vlbench reads {FORMAT}")
    snapshot = folder / str(manifest["snapshot"])
    for f in (MODEL_FILE, TENSORS_FILE, STATE_FILE):
        path = snapshot / f
        expected = manifest["files"].get(f)
        if expected is None:
            raise CheckpointError(f"{manifest_path}: lists no {f}")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by {manifest_path})")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"{path}: truncated or overwritten ({size} bytes, the manifest says {expected['bytes']})"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: corrupt (its SHA-256 differs from the manifest's)")
    params = _read_safetensors(snapshot / MODEL_FILE)
    tensors = _read_safetensors(snapshot / TENSORS_FILE)
    state_path = snapshot / STATE_FILE
    try:
        state = decode(_read_json(state_path), tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{state_path}: malformed state ({type(e).__name__}: {e})") from None
    return params, state, snapshot


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- state encoding


def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON-able form of `obj`; its tensors go into `tensors` under their path in the tree."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"__items__": [[encode(k, tensors, f"{path}/#{i}"), encode(v, tensors, f"{path}/{k}")]
                              for i, (k, v) in enumerate(obj.items())]}  # fmt: skip
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()  # a numpy scalar (a metric, say)
    raise TypeError(f"checkpoint state at {path or '/'}: cannot store a {type(obj).__name__}")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {decode(k, tensors): decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        return {k: decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    return obj


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a directory; the rename order still holds
        pass
