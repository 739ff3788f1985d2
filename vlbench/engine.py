"""The one training engine: multi-task training with task-homogeneous batches, evaluation, test.

It takes a model whose trainable parameters are already chosen (by a method), the per-task data,
and the optimisation config; it knows nothing about methods or the database. Results leave through
the `on_epoch_end` callback and the returned TrainResult.

A run checkpoints (vlbench.checkpoint) and resumes exactly: on CPU with a fixed seed, a run stopped
at any step and resumed gives the same step losses, val history and test metrics, bit for bit, as
one that was never stopped. With a `Dist` (vlbench.distributed) one run trains data-parallel on
several processes, numerically equal (up to float reordering) to the one-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from vlbench.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointPolicy,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vlbench.config import OptimConfig
from vlbench.data import TaskData, collate_train
from vlbench.distributed import Dist
from vlbench.memory import keep_freed_memory, trim_heap
from vlbench.model import VLModel

if TYPE_CHECKING:
    from vlbench.methods.base import ParamGroup


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss); the sweep records it as failed."""


class Interrupted(Exception):
    """train() stopped because stop_requested() was true, after writing a checkpoint (when it had a
    CheckpointPolicy): a later train() with the same policy resumes from it."""

    def __init__(self, epoch: int, step: int, checkpoint: Path | None = None):
        where = f"; checkpoint in {checkpoint}" if checkpoint is not None else " (no checkpoint policy: nothing saved)"
        super().__init__(f"stopped on request in epoch {epoch} after {step} optimizer steps{where}")
        self.epoch = epoch  # the epoch in progress (0-based)
        self.step = step  # optimizer steps done in all
        self.checkpoint = checkpoint

    def __reduce__(self):  # picklable with its fields (a worker process may send it back)
        return (type(self), (self.epoch, self.step, self.checkpoint))


@dataclass
class TrainResult:
    test: dict[str, dict[str, float]]
    epochs: int
    steps: int
    train_seconds: float
    eval_seconds: float
    samples_per_second: float
    val_history: list[dict[str, dict[str, float]]] = field(default_factory=list)
    # {"epoch", "step" (global), "epoch_step" (batches of that epoch done), "epochs_done"} of the
    # checkpoint this run resumed from, None when it started fresh
    resumed_from: dict | None = None
    step_losses: list[float] = field(default_factory=list)  # global-batch loss of every optimizer step


def epoch_schedule(
    data: dict[str, TaskData], batch_size: int | dict[str, int], epoch: int, seed: int
) -> list[tuple[str, list[int]]]:
    """One entry per batch of every task's loader, shuffled with the epoch as seed (docs/paper-facts.md §4),
    so tasks appear in proportion to their number of batches. `batch_size`: one size, or one per task."""
    entries = []
    for name in sorted(data):
        size = batch_size[name] if isinstance(batch_size, dict) else batch_size
        order = list(range(len(data[name].train_items)))
        random.Random(f"{seed}-{epoch}-{name}").shuffle(order)
        entries += [(name, order[i : i + size]) for i in range(0, len(order), size)]
    random.Random(f"{seed}-{epoch}").shuffle(entries)
    return entries


def decay_groups(named_parameters, weight_decay: float) -> list[dict]:
    """AdamW's two groups of the trainable parameters: `weight_decay` on weight matrices, none on
    biases, norms and other 0/1-d tensors (gains, gates, CLIP's temperature)."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        is_norm = "layer_norm" in name or "layernorm" in name or ".norm" in name or name.endswith("LayerNorm.weight")
        (no_decay if name.endswith("bias") or is_norm or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_schedule(total_steps: int, warmup_ratio: float, decay: str = "linear") -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warmup over `warmup_ratio` of the steps, then a
    linear (training) or cosine (tiny pretraining) decay to zero."""
    warmup = max(1, int(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def build_optimizer(model: VLModel, optim: OptimConfig, total_steps: int, groups: Sequence[ParamGroup] = ()):
    """AdamW without weight decay on biases and LayerNorm weights; linear warmup then linear decay.

    `groups` are the method's parameters with their own optimiser (its `param_groups`; Table 3's CLIP:
    plain SGD at its own learning rate), each built apart, on the same schedule. Returns the
    optimizers and their schedulers (one each when the method declares no group)."""
    own = {id(p) for group in groups for p in group.params}
    default = decay_groups(((n, p) for n, p in model.named_parameters() if id(p) not in own), optim.weight_decay)
    optimizers = [
        torch.optim.AdamW(
            default,
            lr=optim.lr,
            eps=optim.adam_eps,
            betas=(0.9, 0.999),
            # one fused kernel over all parameters instead of a Python loop over each (CPU and CUDA)
            fused=any(g["params"] for g in default),
        )
    ]
    for group in groups:
        params = [p for p in group.params if p.requires_grad]
        lr = optim.lr if group.lr is None else group.lr
        if group.optimizer == "sgd":
            optimizers.append(torch.optim.SGD(params, lr=lr))
        else:
            optimizers.append(torch.optim.AdamW(params, lr=lr, eps=optim.adam_eps, weight_decay=optim.weight_decay))
    factor = warmup_schedule(total_steps, optim.warmup_ratio)
    return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]


PRECISIONS = ("fp32", "bf16")
# bump when training, evaluation or decoding can give other numbers for the same config (the runs'
# fingerprints then differ and `vlbench sweep` trains them again); 2: fused AdamW
ENGINE_VERSION = 2


def autocast(device, precision: str):
    """The forward passes' precision: bf16 autocast (weights, gradients and AdamW state stay fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare_device(device) -> None:
    """Process-wide settings for `device`'s speed: TF32 matmuls on CUDA (the GPU's fp32 speed on
    tensor cores); on CPU, large tensors reuse freed heap pages (memory.keep_freed_memory)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: VLModel, data: dict[str, TaskData], split: str, optim: OptimConfig, device, dist: Dist | None = None
) -> dict[str, dict[str, float]]:
    """Every task's metrics on `split`: the tasks' scores of `predict`'s predictions."""
    return score(data, split, predict(model, data, split, optim, device, dist))


@torch.no_grad()
def predict(
    model: VLModel, data: dict[str, TaskData], split: str, optim: OptimConfig, device, dist: Dist | None = None
) -> dict[str, dict[str, str]]:
    """Every task's predictions on `split`, {task: {example uid: text}}. Under `dist` each rank
    decodes every world_size-th eval batch (the same batches as one process, so the same padding)
    and the predictions are gathered: every rank returns the whole split's. Random number streams
    are left as they were."""
    prepare_device(device)
    cuda = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        model.eval()
        batches = [(name, i) for name, d in data.items() for i in range(0, len(d.split(split)), optim.eval_batch_size)]
        rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        predictions: dict[str, dict[str, str]] = {name: {} for name in data}
        for name, i in batches[rank::world]:
            task_data = data[name]
            model.router.task = name
            chunk = task_data.split(split)[i : i + optim.eval_batch_size]
            batch = task_data.inputs(chunk, device)
            with autocast(device, optim.precision):
                predictions[name].update(zip((e.uid for e in chunk), task_data.predict(model, batch, optim)))
        if dist is not None:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = {name: {uid: p for part in gathered for uid, p in part[name].items()} for name in data}
    trim_heap()  # evaluation's freed pages go back; training's large tensors fault in once again
    return predictions


def score(data: dict[str, TaskData], split: str, predictions: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Every task's metrics of `predictions` ({task: {uid: text}}) on `split`."""
    return {name: d.task.score(d.split(split), predictions[name]) for name, d in data.items()}


# ----------------------------------------------------------------------------- training


@dataclass
class _Progress:
    """Where training stands: what a checkpoint holds besides weights, optimizer and RNG states."""

    epoch: int = 0  # the epoch in progress (or just finished)
    epoch_step: int = 0  # batches of epoch_schedule(..., epoch, ...) done
    step: int = 0  # optimizer steps done in all
    samples: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    history: list = field(default_factory=list)  # val metrics of every finished epoch
    step_losses: list = field(default_factory=list)

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step, "epochs_done": len(self.history)}


def train(
    model: VLModel,
    data: dict[str, TaskData],
    optim: OptimConfig,
    seed: int,
    device: torch.device,
    *,
    on_epoch_end: Callable[[int, dict[str, dict[str, float]]], None] = lambda epoch, metrics: None,
    on_step: Callable[[int, int, int, dict], None] = lambda epoch, step, total_steps, stats: None,
    checkpoints: CheckpointPolicy | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    dist: Dist | None = None,
    param_groups: Sequence[ParamGroup] = (),
) -> TrainResult:
    """Train `model` on `data`, evaluate on val after every epoch and on test at the end.

    * `on_step(epoch, step, total_steps, stats)` after every optimizer step (step: global steps done;
      stats: the step's "loss" and "lr", the run's "samples" and "train_seconds" so far),
      `on_epoch_end(epoch, val_metrics)` after every epoch's evaluation; under `dist` on rank 0 only.
    * `checkpoints`: a checkpoint in `checkpoints.folder` is resumed from exactly where it was taken
      (on_epoch_end is first called again for the epochs it holds); one is written after every
      epoch, every `every_steps` optimizer steps and when stopping on request.
    * `stop_requested()` is polled after every optimizer step and every epoch's end; when true (on any
      rank) a checkpoint is written and Interrupted raised.
    * `param_groups`: the method's parameters with their own optimiser (`Method.param_groups`).
    * `dist` (a joined process group, see vlbench.distributed): data parallel. Every rank collates
      the whole global batch as one process would and trains on its contiguous shard of rows, with
      the loss scaled so the averaged gradient is the one-process gradient of the global batch mean.
    """
    model.to(device)
    prepare_device(device)
    main = dist is None or dist.is_main
    batch_sizes = {name: dict(optim.task_batch_sizes).get(name, optim.batch_size) for name in data}
    schedules_per_epoch = len(epoch_schedule(data, batch_sizes, 0, seed))
    total_steps = schedules_per_epoch * optim.epochs
    optimizers, schedulers = build_optimizer(model, optim, total_steps, param_groups)
    trainable_named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in trainable_named]
    rng = random.Random(seed)  # answer sampling for soft-label tasks
    run = _Progress()
    fingerprint = run_fingerprint(model, data, optim, seed, optimizers)
    resumed_from = None
    if checkpoints is not None and _found_by_every_rank(checkpoints.folder, dist):
        _restore(checkpoints.folder, fingerprint, trainable_named, optimizers, schedulers, rng, run, device, dist)
        resumed_from = run.position()
        if main:
            for epoch, metrics in enumerate(run.history):
                on_epoch_end(epoch, metrics)
    net = model
    if dist is not None:  # per-task modules sit out other tasks' batches: find_unused_parameters
        dev = torch.device(device)
        device_ids = None
        if dev.type == "cuda":
            device_ids = [dev.index if dev.index is not None else torch.cuda.current_device()]
        net = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def save() -> Path | None:
        if checkpoints is None:
            return None
        return _save(checkpoints.folder, fingerprint, trainable_named, optimizers, schedulers, rng, run, device, dist)

    def stop(where: str) -> None:
        if _any_rank(stop_requested(), dist):
            folder = save() if where == "step" else (checkpoints.folder if checkpoints is not None else None)
            raise Interrupted(run.epoch, run.step, folder)

    for epoch in range(run.epoch, optim.epochs):
        if epoch != run.epoch:
            run.epoch, run.epoch_step = epoch, 0
        schedule = epoch_schedule(data, batch_sizes, epoch, seed)
        net.train()
        while run.epoch_step < len(schedule):
            name, indices = schedule[run.epoch_step]
            started = time.perf_counter()
            model.router.task = name
            batch = collate_train(data[name], indices, rng, device)
            if dist is None:
                with autocast(device, optim.precision):
                    loss = model.loss(batch)
                global_loss = loss.detach()
            else:
                with autocast(device, optim.precision):
                    local_sum = net(_shard(batch, len(indices), dist)).sum()
                global_loss = local_sum.detach().clone()
                torch.distributed.all_reduce(global_loss)
                global_loss /= len(indices)
                loss = local_sum * (dist.world_size / len(indices))  # DDP averages: the global mean's gradient
            loss_value = global_loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss is {loss_value} at epoch {epoch} step {run.step} (task {name})")
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip)
            for optimizer, scheduler in zip(optimizers, schedulers):
                optimizer.step()
                scheduler.step()
            run.epoch_step += 1
            run.step += 1
            run.samples += len(indices)
            run.step_losses.append(loss_value)
            run.train_seconds += time.perf_counter() - started
            if main:
                stats = {"loss": loss_value, "lr": schedulers[0].get_last_lr()[0], "samples": run.samples,
                         "train_seconds": run.train_seconds}  # fmt: skip
                on_step(epoch, run.step, total_steps, stats)
            if checkpoints is not None and checkpoints.every_steps and run.step % checkpoints.every_steps == 0:
                save()
                stop("saved")
            else:
                stop("step")
        if len(run.history) <= epoch:  # not yet evaluated (a checkpoint of this epoch's last step may be)
            started = time.perf_counter()
            val = evaluate(model, data, "val", optim, device, dist)
            run.eval_seconds += time.perf_counter() - started
            run.history.append(val)
            if main:
                on_epoch_end(epoch, val)
            save()
            stop("saved")
    started = time.perf_counter()
    test = evaluate(model, data, "test", optim, device, dist)
    run.eval_seconds += time.perf_counter() - started
    return TrainResult(
        test=test,
        epochs=optim.epochs,
        steps=run.step,
        train_seconds=run.train_seconds,
        eval_seconds=run.eval_seconds,
        samples_per_second=run.samples / run.train_seconds if run.train_seconds > 0 else math.nan,
        val_history=run.history,
        resumed_from=resumed_from,
        step_losses=run.step_losses,
    )


def _shard(batch: dict[str, torch.Tensor], n: int, dist: Dist) -> dict[str, torch.Tensor]:
    """This rank's contiguous rows of a collated global batch of n rows (padding as the whole batch's).
    A rank left without rows (n < world size) takes row 0 at weight 0: it still joins the all-reduce."""
    lo, hi = n * dist.rank // dist.world_size, n * (dist.rank + 1) // dist.world_size
    if hi > lo:
        return {k: v[lo:hi] for k, v in batch.items()}
    local = {k: v[:1] for k, v in batch.items()}
    local["weights"] = torch.zeros_like(local["weights"])
    return local


def _found_by_every_rank(folder: Path, dist: Dist | None) -> bool:
    """has_checkpoint(folder), the same on every rank (else the ranks would train different runs)."""
    found = has_checkpoint(folder)
    if dist is None:
        return found
    seen = [None] * dist.world_size
    torch.distributed.all_gather_object(seen, found)
    if len(set(seen)) > 1:
        raise CheckpointError(
            f"{folder}: ranks {[r for r, f in enumerate(seen) if f]} see a checkpoint there and ranks "
            f"{[r for r, f in enumerate(seen) if not f]} do not; the checkpoint folder must be shared by every rank"
        )
    return found


def _any_rank(flag: bool, dist: Dist | None) -> bool:
    if dist is None:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=dist.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------- checkpoints


def run_fingerprint(model: VLModel, data: dict[str, TaskData], optim: OptimConfig, seed: int, optimizers) -> dict:
    """What a checkpoint must have been made with to be resumed by this run (JSON-normalised)."""
    fingerprint = {
        "optim": dataclasses.asdict(optim),
        "seed": seed,
        "tasks": {
            name: {
                "train_items": len(d.train_items),
                "uids": hashlib.sha256("\n".join(e.uid for e in d.train_items).encode()).hexdigest()[:16],
            }
            for name, d in sorted(data.items())
        },
        "trainable": sorted([n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad),
        "optimizers": [[type(o).__name__, [len(g["params"]) for g in o.param_groups]] for o in optimizers],
    }
    return json.loads(json.dumps(fingerprint))


def _check_fingerprint(saved: dict, expected: dict, file: Path) -> None:
    if saved == expected:
        return
    problems = []
    for key in sorted(set(saved) | set(expected)):
        a, b = saved.get(key), expected.get(key)
        if a == b:
            continue
        if key == "trainable" and isinstance(a, list):
            theirs, ours = {n: s for n, s in a}, {n: s for n, s in b}
            only_theirs, only_ours = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
            reshaped = sorted(n for n in set(theirs) & set(ours) if theirs[n] != ours[n])
            groups = (("only in the checkpoint", only_theirs), ("only in this run", only_ours), ("of other shapes", reshaped))
            for label, names in groups:
                if names:
                    problems.append(f"{len(names)} trainable parameter(s) {label}, e.g. {names[0]}")
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    problems.append(f"{key}.{k}: checkpoint {a.get(k)!r}, this run {b.get(k)!r}")
        else:
            problems.append(f"{key}: checkpoint {a!r}, this run {b!r}")
    raise CheckpointError(f"{file}: a checkpoint of another run ({'; '.join(problems)})")


def _rng_state(device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _save(folder, fingerprint, trainable_named, optimizers, schedulers, rng, run: _Progress, device, dist) -> Path:
    """Rank 0 writes (with every rank's torch RNG states); the others wait for it."""
    torch_rng = [_rng_state(device)]
    if dist is not None:
        torch_rng = [None] * dist.world_size
        torch.distributed.all_gather_object(torch_rng, _rng_state(device))
    if dist is None or dist.is_main:
        state = {
            "fingerprint": fingerprint,
            "position": run.position(),
            "samples": run.samples,
            "train_seconds": run.train_seconds,
            "eval_seconds": run.eval_seconds,
            "val_history": run.history,
            "step_losses": run.step_losses,
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers],
            "python_rng": rng.getstate(),
            "torch_rng": torch_rng,
        }
        save_checkpoint(folder, dict(trainable_named), state)
    if dist is not None:
        torch.distributed.barrier()
    return Path(folder)


def _restore(folder, fingerprint, trainable_named, optimizers, schedulers, rng, run: _Progress, device, dist) -> None:
    params, state, snapshot = load_checkpoint(folder)
    state_file, model_file = snapshot / STATE_FILE, snapshot / MODEL_FILE
    _check_fingerprint(state.get("fingerprint"), fingerprint, state_file)
    names = {n for n, _ in trainable_named}
    if set(params) != names:
        missing, extra = sorted(names - set(params)), sorted(set(params) - names)
        raise CheckpointError(f"{model_file}: holds other parameters (missing {missing[:3]}, unexpected {extra[:3]})")
    try:
        with torch.no_grad():
            for n, p in trainable_named:
                if params[n].shape != p.shape:
                    raise ValueError(f"{n} has shape {tuple(params[n].shape)}, the model's is {tuple(p.shape)}")
                p.copy_(params[n])
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{model_file}: {e}") from None
    try:
        if len(state["optimizers"]) != len(optimizers) or len(state["schedulers"]) != len(schedulers):
            raise ValueError("another number of optimizers")
        for optimizer, saved in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(schedulers, state["schedulers"]):
            scheduler.load_state_dict(saved)
        rng.setstate(state["python_rng"])
        rank = dist.rank if dist is not None else 0
        mine = state["torch_rng"][rank % len(state["torch_rng"])]
        torch.set_rng_state(mine["cpu"])
        if torch.device(device).type == "cuda" and "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"], device)
        position = state["position"]
        run.epoch, run.epoch_step, run.step = int(position["epoch"]), int(position["epoch_step"]), int(position["step"])
        run.samples = int(state["samples"])
        run.train_seconds, run.eval_seconds = float(state["train_seconds"]), float(state["eval_seconds"])
        run.history, run.step_losses = list(state["val_history"]), [float(x) for x in state["step_losses"]]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{state_file}: unusable state ({type(e).__name__}: {e})") from None
    if len(run.step_losses) != run.step or len(run.history) > run.epoch + 1:
        raise CheckpointError(f"{state_file}: inconsistent position {run.position()}")
