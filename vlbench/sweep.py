"""Running a sweep: every job through the one engine, every result into the store.

Shared resources (backbones, the task suite, frozen image features) are built once per sweep and
reused by every run. A run that raises is recorded as failed with its reason and the sweep goes on;
a finished run is never retrained (its config key is already `done` in the store).
"""

from __future__ import annotations

import copy
import json
import platform
import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from safetensors.torch import save_file

from vlbench.backbones import Backbones, load_backbones
from vlbench.config import OptimConfig, RunConfig, UserError
from vlbench.data import RenderedPixels, TaskData
from vlbench.engine import train
from vlbench.features import FeatureStore, image_features, open_feature_store
from vlbench.files import atomic_write
from vlbench.methods import build_vl_model, trains_vision
from vlbench.model import VLModel
from vlbench.params import count_for_config, count_parameters
from vlbench.store import ClaimError, Store
from vlbench.tasks import ALL_TASKS, Suite, build_suite
from vlbench.tasks.video_resources import video_resources

TEXT_ONLY = "text-only"  # the method name under which the text-only prior is stored


@dataclass
class SweepSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    seconds: float = 0.0


@dataclass
class Resources:
    """What every run of one (backbone, data) group shares."""

    backbones: Backbones
    suite: object  # vlbench.tasks.Suite
    features: object  # vlbench.features.FeatureTable


def run_sweep(
    configs: list[RunConfig], store: Store, sweep_name: str, command: str, runs_dir: Path, console: Console
) -> SweepSummary:
    started = time.perf_counter()
    summary = SweepSummary()
    sweep_id = store.get_or_create_sweep(sweep_name, configs[0].suite, configs[0].profile, command)
    todo = []
    for cfg in configs:
        if store.status_of(cfg.key()) == "done":
            summary.skipped.append(cfg.label())
        else:
            todo.append(cfg)
    if summary.skipped:
        console.print(f"[dim]{len(summary.skipped)} run(s) already done, skipped[/dim]")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        runs_bar = progress.add_task("runs", total=len(todo))
        resources: dict[tuple, Resources] = {}
        for cfg in [*text_only_configs(configs, store), *todo]:
            group = (cfg.backbone, cfg.data, cfg.tasks)
            if group not in resources:
                resources[group] = build_resources(cfg, runs_dir / "cache", progress)
            run_dir = runs_dir / sweep_name / cfg.key()
            try:
                run_id, owner = store.claim_run(sweep_id, cfg, provenance())
            except ClaimError as e:  # another sweep finished or is running it meanwhile: not ours to train
                summary.skipped.append(cfg.label())
                console.print(f"[dim]skipped: {e}[/dim]")
                if cfg.method != TEXT_ONLY:
                    progress.advance(runs_bar)
                continue
            try:
                if cfg.method == TEXT_ONLY:
                    run_text_only(cfg, resources[group], store, run_id, owner)
                else:
                    run_one(cfg, resources[group], store, run_id, owner, run_dir, progress)
                    summary.done.append(cfg.label())
                    progress.advance(runs_bar)
            except KeyboardInterrupt:
                store.fail_run(run_id, owner, "interrupted")
                raise
            except Exception as e:  # a failed run is recorded and the sweep goes on
                reason = f"{type(e).__name__}: {e}"
                store.fail_run(run_id, owner, reason)
                summary.failed.append((cfg.label(), reason))
                progress.advance(runs_bar)
                console.print(f"[red]run {cfg.label()} failed:[/red] {reason}")
    summary.seconds = time.perf_counter() - started
    return summary


def build_resources(cfg: RunConfig, cache_dir: Path, progress: Progress) -> Resources:
    if cfg.suite == "video-text":  # clips: frame embeddings, subtitles in the text
        return Resources(*video_resources(cfg, cache_dir, progress))
    if cfg.data.source == "real":
        return build_real_resources(cfg, cache_dir, progress)
    backbones = load_backbones(cfg.backbone, cache_dir, progress=progress)
    suite = build_suite(cfg.data, cfg.tasks)
    features = image_features(
        backbones, suite.image_ids(), suite.bank.render, cache_dir, dataset_key=suite.fingerprint(), progress=progress
    )
    return Resources(backbones, suite, features)


def build_real_resources(cfg: RunConfig, cache_dir: Path, progress: Progress) -> Resources:
    """Real data: every file read and checked and every image's features found before the backbones
    load (tiny ones may pretrain first) and before any run trains; features are read lazily."""
    suite = build_suite(cfg.data, cfg.tasks, progress)
    features = open_feature_store(cfg.data.features)
    check_features(suite, features)
    backbones = load_backbones(cfg.backbone, cache_dir, progress=progress)
    side = round(features.num_tokens**0.5)
    if features.feat_dim != backbones.feat_dim or side * side != features.num_tokens:
        raise UserError(
            f"--features: {features.name} holds {features.num_tokens} x {features.feat_dim}-d features per image; "
            f"the {cfg.backbone} backbone needs a square grid of its CLIP's {backbones.feat_dim}-d features "
            "(extract them with that CLIP: vlbench features extract)"
        )
    return Resources(backbones, suite, features)


def check_features(suite: Suite, features: FeatureStore) -> None:
    """Every image of every example has features, or a UserError naming the store and an example."""
    image_ids = suite.image_ids()
    missing = set(features.missing(image_ids))
    if not missing:
        return
    task, split, uid, image_id = suite.first_use(missing)
    raise UserError(
        f"--features: feature store {features.name} has no features for {len(missing)} of the {len(image_ids)} "
        f"images, e.g. {image_id!r} ({task} {split} example {uid}); extract them into it with vlbench features extract"
    )


def build_model(cfg: RunConfig, backbones: Backbones) -> VLModel:
    """A fresh VL model from the (cached) backbones with the run's method applied."""
    seed_everything(cfg.seed)
    vision = copy.deepcopy(backbones.vision) if trains_vision(cfg) else None
    return build_vl_model(cfg, copy.deepcopy(backbones.lm), backbones.feat_dim, backbones.spec.n_vis_tokens, vision)


def plan_table(configs: list[RunConfig]) -> Table:
    """The resolved jobs with their updated-params %, from the architectures alone (no weights, no data)."""
    table = Table("run", "lr", "epochs", "trainable", "total", "params %", title=f"{len(configs)} job(s)")
    for cfg in configs:
        counts = count_for_config(cfg)
        table.add_row(
            cfg.label(), f"{cfg.optim.lr:g}", str(cfg.optim.epochs), f"{counts.trainable:,}", f"{counts.total:,}",
            f"{counts.percent:.2f}",
        )
    return table


def run_one(
    cfg: RunConfig, res: Resources, store: Store, run_id: int, owner: str, run_dir: Path, progress: Progress
) -> None:
    model = build_model(cfg, res.backbones)
    counts = count_parameters(model)
    store.record_params(run_id, owner, counts.trainable, counts.total, counts.convention, counts.components)
    # a model that trains CLIP (Table 3) sees the rendered images, not the frozen features
    pixels = RenderedPixels(res.suite.bank.render, res.backbones.preprocess) if model.vision is not None else None
    data = {
        t: TaskData(ALL_TASKS[t], res.backbones.tokenizer, res.features, res.suite.examples[t], pixels) for t in cfg.tasks
    }
    steps_bar = progress.add_task(f"  {cfg.label()}", total=None)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(
        model,
        data,
        cfg.optim,
        cfg.seed,
        device(),
        on_epoch_end=lambda epoch, metrics: store.record_metrics(run_id, owner, "val", epoch, metrics),
        on_step=lambda step, total: progress.update(steps_bar, completed=step, total=total),
    )
    progress.remove_task(steps_bar)
    store.record_metrics(run_id, owner, "test", result.epochs - 1, result.test)
    checkpoint = run_dir / "trainable.safetensors"
    write_run_folder(run_dir, cfg, result.test, model)
    store.finish_run(
        run_id,
        owner,
        {
            "train_seconds": result.train_seconds,
            "eval_seconds": result.eval_seconds,
            "samples_per_second": result.samples_per_second,
            "peak_memory_mb": peak_memory_mb(),
            "checkpoint_bytes": checkpoint.stat().st_size,
        },
    )


def text_only_configs(configs: list[RunConfig], store: Store) -> list[RunConfig]:
    """One text-only prior per synthetic data setting: the reference every method must beat."""
    out = {}
    for cfg in configs:
        if cfg.data.source != "synthetic":
            continue
        base = RunConfig(
            suite=cfg.suite, profile=cfg.profile, backbone=cfg.backbone, tasks=cfg.tasks, method=TEXT_ONLY,
            data=cfg.data, optim=OptimConfig(epochs=0),
        )
        if store.status_of(base.key()) != "done":
            out[base.key()] = base
    return list(out.values())


def run_text_only(cfg: RunConfig, res: Resources, store: Store, run_id: int, owner: str) -> None:
    """Score the best answer that ignores the image (the most frequent training answer per question)."""
    scores = {}
    for t in cfg.tasks:
        task, examples = ALL_TASKS[t], res.suite.examples[t]
        predictions = task.text_only_predictions(examples["train"], examples["test"])
        scores[t] = task.score(examples["test"], predictions)
    store.record_metrics(run_id, owner, "test", 0, scores)
    store.finish_run(run_id, owner, {})


def write_run_folder(run_dir: Path, cfg: RunConfig, test: dict, model: VLModel) -> None:
    """Resolved config, trainable-only weights and final metrics; each file written atomically."""
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    atomic_write(run_dir / "trainable.safetensors", lambda tmp: save_file(trainable, str(tmp)))
    for name, obj in (("config.json", cfg.to_dict()), ("metrics.json", {"test": test})):
        text = json.dumps(obj, indent=2, sort_keys=True)
        atomic_write(run_dir / name, lambda tmp: tmp.write_text(text))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource  # CPU: the process's peak resident set (Linux reports KiB)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def provenance() -> dict:
    versions = {"python": platform.python_version()}
    for pkg in ("vlbench", "torch", "transformers", "open_clip_torch", "tokenizers", "sqlalchemy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dev = device()
    return {
        "host": socket.gethostname(),
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "git_commit": git_commit(),
        "versions": versions,
    }


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
