"""The one training engine: multi-task training with task-homogeneous batches, evaluation, test.

It takes a model whose trainable parameters are already chosen (by a method), the per-task data,
and the optimisation config; it knows nothing about methods or the database. Results leave through
the `on_epoch_end` callback and the returned TrainResult.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from vlbench.config import OptimConfig
from vlbench.data import TaskData, collate_train
from vlbench.model import VLModel


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss); the sweep records it as failed."""


@dataclass
class TrainResult:
    test: dict[str, dict[str, float]]
    epochs: int
    steps: int
    train_seconds: float
    eval_seconds: float
    samples_per_second: float
    val_history: list[dict[str, dict[str, float]]] = field(default_factory=list)


def epoch_schedule(
    data: dict[str, TaskData], batch_size: int | dict[str, int], epoch: int, seed: int
) -> list[tuple[str, list[int]]]:
    """One entry per batch of every task's loader, shuffled with the epoch as seed (REFERENCE.md 4),
    so tasks appear in proportion to their number of batches. `batch_size`: one size, or one per task."""
    entries = []
    for name in sorted(data):
        size = batch_size[name] if isinstance(batch_size, dict) else batch_size
        order = list(range(len(data[name].train_items)))
        random.Random(f"{seed}-{epoch}-{name}").shuffle(order)
        entries += [(name, order[i : i + size]) for i in range(0, len(order), size)]
    random.Random(f"{seed}-{epoch}").shuffle(entries)
    return entries


def build_optimizer(model: VLModel, optim: OptimConfig, total_steps: int):
    """AdamW without weight decay on biases and LayerNorm weights; linear warmup then linear decay.

    A trained vision encoder (Table 3) gets plain SGD at `model.vision_lr` instead, as in the paper.
    Returns the optimizers and their schedulers (one each without a trained vision encoder)."""
    vision = {id(p) for p in model.vision.parameters()} if model.vision is not None else set()
    decay, no_decay, vision_params = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in vision:
            vision_params.append(p)
            continue
        is_norm = "layer_norm" in name or "layernorm" in name or ".norm" in name or name.endswith("LayerNorm.weight")
        (no_decay if name.endswith("bias") or is_norm or p.ndim == 1 else decay).append(p)
    optimizers = [
        torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr,
            eps=optim.adam_eps,
            betas=(0.9, 0.999),
        )
    ]
    if vision_params:
        optimizers.append(torch.optim.SGD(vision_params, lr=model.vision_lr))
    warmup = max(1, int(optim.warmup_ratio * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, lr_factor) for o in optimizers]


@torch.no_grad()
def evaluate(model: VLModel, data: dict[str, TaskData], split: str, optim: OptimConfig, device) -> dict[str, dict[str, float]]:
    model.eval()
    results = {}
    for name, task_data in data.items():
        task = task_data.task
        model.router.task = name
        examples = task_data.split(split)
        predictions = {}
        for i in range(0, len(examples), optim.eval_batch_size):
            chunk = examples[i : i + optim.eval_batch_size]
            batch = task_data.inputs(chunk, device)
            predictions.update(zip((e.uid for e in chunk), task_data.predict(model, batch, optim)))
        results[name] = task.score(examples, predictions)
    return results


def train(
    model: VLModel,
    data: dict[str, TaskData],
    optim: OptimConfig,
    seed: int,
    device: torch.device,
    on_epoch_end: Callable[[int, dict[str, dict[str, float]]], None] = lambda epoch, metrics: None,
    on_step: Callable[[int, int], None] = lambda step, total: None,
) -> TrainResult:
    model.to(device)
    batch_sizes = {name: dict(optim.task_batch_sizes).get(name, optim.batch_size) for name in data}
    schedules_per_epoch = len(epoch_schedule(data, batch_sizes, 0, seed))
    total_steps = schedules_per_epoch * optim.epochs
    optimizers, schedulers = build_optimizer(model, optim, total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(seed)  # answer sampling for soft-label tasks
    step, samples, train_seconds, eval_seconds = 0, 0, 0.0, 0.0
    history = []
    for epoch in range(optim.epochs):
        model.train()
        started = time.perf_counter()
        for name, indices in epoch_schedule(data, batch_sizes, epoch, seed):
            model.router.task = name
            batch = collate_train(data[name], indices, rng, device)
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch} step {step} (task {name})")
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip)
            for optimizer, scheduler in zip(optimizers, schedulers):
                optimizer.step()
                scheduler.step()
            step += 1
            samples += len(indices)
            on_step(step, total_steps)
        train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        val = evaluate(model, data, "val", optim, device)
        eval_seconds += time.perf_counter() - started
        history.append(val)
        on_epoch_end(epoch, val)
    started = time.perf_counter()
    test = evaluate(model, data, "test", optim, device)
    eval_seconds += time.perf_counter() - started
    return TrainResult(
        test=test,
        epochs=optim.epochs,
        steps=step,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        samples_per_second=samples / train_seconds if train_seconds > 0 else math.nan,
        val_history=history,
    )
