"""Running a sweep: every job through the one engine, every result into the store.

A sweep plans (which runs are done, failed, or still to train), builds the shared resources
(backbones, the task suite, frozen image features) once before any worker starts, and hands the
pending runs to an execution backend (vlbench.execution): this process, N local worker processes,
or a Slurm job array. Every backend runs each run through `execute_run`: claim it in the store,
resume from its checkpoint if it has one, train, record. A run that raises is recorded as failed
with its reason and the others go on; a finished run is never retrained (its config key is `done`);
a failed one is retried only when asked (--retry-failed); an interrupted or stale one resumes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from safetensors.torch import save_file
from sqlalchemy.exc import SQLAlchemyError

from vlbench import backbones as backbone_registry
from vlbench.backbones import Backbones, BackboneSpec, load_backbones
from vlbench.baselines import BASELINES, is_baseline
from vlbench.checkpoint import CheckpointPolicy, has_checkpoint, remove_checkpoint
from vlbench.config import OptimConfig, RunConfig, UserError, one_line
from vlbench.data import TaskData
from vlbench.engine import Interrupted, train
from vlbench.execution import (
    ExecutionOptions,
    RunMonitor,
    RunTakenOver,
    StopFlag,
    slurm_array_active,
    slurm_executor,
    start_local_workers,
    stop_workers,
    use_threads,
)
from vlbench.features import FeatureStore, image_features, image_files, load_encoder, open_feature_store
from vlbench.files import atomic_write
from vlbench.fingerprint import digest, first_difference, scoring_only
from vlbench.fingerprint import fingerprints as fingerprints_of
from vlbench.live import GridView
from vlbench.memory import PeakMemory
from vlbench.methods import build_vl_model, param_groups, trains_vision
from vlbench.model import VLModel
from vlbench.params import count_for_config, count_parameters
from vlbench.store import ClaimError, OwnershipError, Store
from vlbench.tasks import ALL_TASKS, Suite, build_suite
from vlbench.tasks.video_resources import video_resources
from vlbench.visual import Pixels, as_visual_source, image_file_reader
from vlbench.trackers import default_mlflow_uri, open_trackers

# what stops a run at its next step; USR2 is Slurm's (submitit's) warning before a time limit or preemption
SLURM_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@dataclass
class SweepSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done
    superseded: list[tuple[str, str]] = field(default_factory=list)  # (label, what changed): done, but trained again
    rescored: list[tuple[str, str]] = field(default_factory=list)  # (label, what changed): done, scored again
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    interrupted: list[tuple[str, str]] = field(default_factory=list)  # (label, where it stopped)
    not_retried: list[str] = field(default_factory=list)  # failed earlier, left alone without --retry-failed
    elsewhere: list[str] = field(default_factory=list)  # running in another live process (worker, array task)
    submitted: str | None = None  # the Slurm job array's id
    seconds: float = 0.0


@dataclass
class Resources:
    """What every run of one (backbone, data) group shares."""

    backbones: Backbones
    suite: object  # vlbench.tasks.Suite
    features: object  # vlbench.features.FeatureTable
    images: dict | None = None  # real data for a model that trains CLIP: image id -> its file (--images)


@dataclass(frozen=True)
class SweepContext:
    """What any process that runs one of the sweep's runs needs: picklable, for worker processes,
    Slurm array tasks and DDP ranks. The backbone recipes travel as data, so every process trains
    on exactly the backbones the sweep built (and never pretrains one of its own)."""

    db_url: str
    sweep_id: int
    sweep_name: str
    runs_dir: str
    specs: dict[str, BackboneSpec]
    execution: ExecutionOptions
    stale_after: float
    fingerprints: dict[str, dict[str, str]]  # config key -> today's fingerprint (vlbench.fingerprint)

    def enter_process(self, threads: int | None = None) -> Store:
        """Set up a fresh process (worker, array task, rank): its threads, the sweep's backbone recipes."""
        if threads is not None:
            use_threads(threads)
        backbone_registry.BACKBONES.update(self.specs)
        return open_shared_store(self.db_url, self.stale_after)

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.runs_dir)


def cache_dir(runs_dir: str | Path) -> Path:
    """Where a runs folder keeps what its sweeps share: tiny backbones, frozen image features."""
    return Path(runs_dir) / "cache"


def runs_dir_of(run_dir: str | Path) -> Path:
    """The runs folder a run folder (runs/<sweep>/<key>) belongs to."""
    return Path(run_dir).parent.parent


DB_URL_ENV = "VLBENCH_DB_URL"  # the store's full URL (with its password) for the sweep's other processes


def open_shared_store(shown_url: str, stale_after: float) -> Store:
    """The sweep's store, from a worker, array task or rank: it exists already (never created here,
    so a task on a node that cannot see it fails instead of filling an empty one)."""
    return Store(os.environ.get(DB_URL_ENV, shown_url), create=False, stale_after=stale_after)


def run_sweep(
    configs: list[RunConfig],
    store: Store,
    sweep_name: str,
    command: str,
    runs_dir: Path,
    console: Console,
    execution: ExecutionOptions = ExecutionOptions(),
) -> SweepSummary:
    """Plan the sweep, build what its runs share, and execute the pending runs on the chosen backend."""
    execution.check()
    if "mlflow" in execution.log_to:  # one absolute URI, so workers and Slurm tasks log to the same store
        execution = replace(execution, mlflow_uri=execution.mlflow_uri or default_mlflow_uri(runs_dir))
    for tracker in open_trackers(execution.log_to, execution.mlflow_uri):  # a tracker that cannot log fails now
        tracker.check([sweep_name])
    started = time.perf_counter()
    summary = SweepSummary()
    sweep_id = store.get_or_create_sweep(sweep_name, configs[0].suite, configs[0].profile, command)
    baselines = baseline_configs(configs)
    fingerprints = fingerprints_of([*baselines, *configs])
    known = {r.key: r for r in store.runs(keys=list(fingerprints))}
    baselines = [c for c in baselines if not reusable(c, known.get(c.key()), fingerprints, store, summary)]
    todo = []
    for cfg in configs:
        record = known.get(cfg.key())
        if reusable(cfg, record, fingerprints, store, summary, rescore=execution.rescore, console=console):
            summary.skipped.append(cfg.label())
        elif record is not None and record.status == "failed" and not execution.retry_failed:
            summary.not_retried.append(cfg.label())
        elif record is not None and record.status == "running" and not record.stale:
            summary.elsewhere.append(cfg.label())
        else:
            todo.append(cfg)
    if summary.skipped:
        console.print(f"[dim]{len(summary.skipped)} run(s) already done, skipped[/dim]")
    for label, reason in summary.rescored:
        console.print(f"[cyan]re-scored[/cyan] {escape(label)} ({escape(reason)}): its trained model, today's metrics")
    for label, reason in summary.superseded:
        console.print(f"[yellow]superseded[/yellow] {escape(label)} (what produced it changed: {escape(reason)}); training it again")
    if summary.elsewhere:
        console.print(f"[dim]{len(summary.elsewhere)} run(s) being trained by live processes, left to them[/dim]")
    if summary.not_retried:
        console.print(f"[yellow]{len(summary.not_retried)} failed run(s) not retried[/yellow] (--retry-failed retries them)")
    if execution.retry_failed:  # each failed run trains again once, from scratch (its checkpoint led to the failure)
        for run_dir in store.reset_failed([c.key() for c in todo]):
            remove_checkpoint(Path(run_dir) / "checkpoint")
    if store.in_memory and (execution.backend == "slurm" or execution.local_workers() > 1 or execution.nproc_per_run > 1):
        raise UserError("--db: an in-memory SQLite database lives in one process; workers, Slurm tasks and DDP ranks need a file or a server")
    # the password travels in the environment (workers and Slurm tasks inherit it), not in pickles on disk
    os.environ[DB_URL_ENV] = store.shareable_url
    context = SweepContext(
        db_url=store.url, sweep_id=sweep_id, sweep_name=sweep_name, runs_dir=str(Path(runs_dir).resolve()),
        specs={c.backbone: backbone_registry.BACKBONES[c.backbone] for c in configs}, execution=execution,
        stale_after=store.stale_after, fingerprints=fingerprints,
    )  # fmt: skip
    resources: dict[tuple, Resources] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        transient=True,
    ) as progress:  # fmt: skip
        for cfg in [*baselines, *todo]:  # built once, here, before any worker starts
            resources_for(cfg, resources, context, progress)
    for cfg in baselines:
        execute_run(cfg, context, store, resources, StopFlag())
    if todo:
        if execution.backend == "slurm":
            submit_slurm(todo, context, store, console, summary)
        elif execution.local_workers() == 1:
            run_here(todo, context, store, resources, console)
        else:
            run_on_workers(todo, context, store, console)
    collect([*baselines, *todo], store, summary, finished=execution.backend == "local" or execution.wait)
    baseline_labels = {c.label() for c in baselines}
    summary.done = [label for label in summary.done if label not in baseline_labels]  # scored, not trained
    summary.seconds = time.perf_counter() - started
    return summary


def reusable(
    cfg: RunConfig, record, fingerprints: dict, store: Store, summary: SweepSummary, rescore: bool = False,
    console: Console | None = None,
) -> bool:
    """Whether the run is done and its numbers came from what would produce them today. A done run
    with another fingerprint is superseded (kept, marked, left out of reports) and trained again;
    with `rescore`, one that differs only in how it is scored is re-scored from its trained model."""
    if record is None or record.status != "done":
        return False
    today = fingerprints[cfg.key()]
    if record.fingerprint == today:
        return True
    reason = first_difference(record.fingerprint, today)
    if rescore and not is_baseline(cfg.method) and scoring_only(record.fingerprint, today):
        from vlbench.runs import rescore_run

        try:
            rescore_run(store, record, today, reason)
            summary.rescored.append((cfg.label(), reason))
            return True
        except UserError as e:  # no trained weights to re-score: train it again instead
            if console is not None:
                console.print(f"[yellow]cannot re-score {escape(cfg.label())}[/yellow]: {escape(str(e))}")
    if store.supersede(cfg.key(), reason) and not is_baseline(cfg.method):
        summary.superseded.append((cfg.label(), reason))
    return False


def resource_group(cfg: RunConfig) -> tuple:
    return (cfg.backbone, cfg.data, cfg.tasks)


def run_here(todo: list[RunConfig], ctx: SweepContext, store: Store, resources: dict, console: Console) -> None:
    """The runs one after another in this process, with the live view polling the store beside them."""
    stop = StopFlag()
    with stop.installed(), GridView(store, [(c.key(), c.label()) for c in todo], console) as view:
        view.poll_in_background()
        for cfg in todo:
            if stop():
                break
            outcome, detail = execute_run(cfg, ctx, store, resources, stop)
            if outcome == "skipped":
                console.print(f"[dim]skipped: {escape(detail)}[/dim]")


def run_on_workers(todo: list[RunConfig], ctx: SweepContext, store: Store, console: Console) -> None:
    """N worker processes pull the runs by claiming them; this process shows the grid and forwards a
    Ctrl-C/SIGTERM to them (each checkpoints its run and marks it interrupted)."""
    n = min(ctx.execution.local_workers(), len(todo))
    gpus = ctx.execution.nproc_per_run if torch.cuda.is_available() else 0
    stop = StopFlag()
    with stop.installed(), GridView(store, [(c.key(), c.label()) for c in todo], console) as view:
        workers = start_local_workers(n, worker_main, (ctx, [c.to_dict() for c in todo]), gpus)
        forwarded = False
        while any(p.is_alive() for p in workers):
            view.refresh()
            if stop() and not forwarded:
                stop_workers(workers)
                forwarded = True
            for p in workers:
                p.join(timeout=1.0 / len(workers))


def worker_main(index: int, threads: int, ctx: SweepContext, cfg_dicts: list[dict]) -> None:
    """One local worker process: claim and run the sweep's runs until none is left to claim."""
    store = ctx.enter_process(threads)
    configs = [RunConfig.from_dict(d) for d in cfg_dicts]
    stop = StopFlag()
    resources: dict[tuple, Resources] = {}
    with stop.installed():
        for cfg in configs[index:] + configs[:index]:  # workers start apart, so first claims rarely collide
            if stop():
                break
            execute_run(cfg, ctx, store, resources, stop)


def collect(configs: list[RunConfig], store: Store, summary: SweepSummary, finished: bool) -> None:
    """What became of the runs this sweep handed out, as the store has it. When the backend has
    finished (local, or Slurm with --wait), a run left unfinished is a failure too: its process died
    before it could say so (OOM-killed, a crashed worker, a database it could not reach)."""
    records = {r.key: r for r in store.runs(keys=[c.key() for c in configs])}
    for cfg in configs:
        r = records.get(cfg.key())
        if r is not None and r.status == "done":
            summary.done.append(cfg.label())
        elif r is not None and r.status == "failed":
            summary.failed.append((cfg.label(), r.error or ""))
        elif r is not None and r.status == "interrupted":
            summary.interrupted.append((cfg.label(), r.error or ""))
        elif r is not None and r.status == "running" and not r.stale:
            summary.elsewhere.append(cfg.label())  # another live process (sweep, array task) has it
        elif finished:
            state = "never started" if r is None or r.status == "pending" else f"left {r.state}"
            summary.failed.append((cfg.label(), f"{state}: its process ended before finishing it (see the log above)"))


def execute_run(cfg: RunConfig, ctx: SweepContext, store: Store, resources: dict, stop: StopFlag) -> tuple[str, str]:
    """Claim one run and train it to the end (resuming from its checkpoint), or record why not; a run
    done is then logged to the sweep's trackers (--log-to).
    Returns (outcome, detail): done | failed | interrupted | skipped (another process has it, or it
    is finished), and the reason where there is one."""
    key = cfg.key()
    world_size = ctx.execution.nproc_per_run if not is_baseline(cfg.method) else 1
    today = ctx.fingerprints[key]
    try:
        run_dir = resume_folder(store, key, today) or new_run_folder(Path(ctx.runs_dir) / ctx.sweep_name, key, today)
        run_id, owner = store.claim_run(
            ctx.sweep_id, cfg, provenance(world_size), retry_failed=False, run_dir=str(run_dir), fingerprint=today
        )
    except ClaimError as e:  # another worker or sweep has it, or finished it meanwhile: not ours to train
        return "skipped", str(e)
    except SQLAlchemyError as e:  # the database is unreachable: the run stays as it was, for a later sweep
        return "skipped", f"database error: {one_line(e)}"
    try:
        if is_baseline(cfg.method):
            run_baseline(cfg, resources_for(cfg, resources, ctx), store, run_id, owner, run_dir)
        elif world_size > 1:
            from vlbench.distributed import launch

            outcome = launch(world_size, distributed_rank, ctx, cfg.to_dict(), run_id, owner, str(run_dir))[0]
            if outcome["status"] == "interrupted":
                raise Interrupted(outcome["epoch"], outcome["step"])
        else:
            train_run(cfg, resources_for(cfg, resources, ctx), store, run_id, owner, run_dir, ctx.execution, stop)
    except Interrupted as e:
        reason = (
            f"interrupted by {stop.reason or 'a signal'} at epoch {e.epoch + 1}, step {e.step}; checkpoint saved, "
            "the same sweep command resumes it"
        )
        with _unless_taken_over():
            store.interrupt_run(run_id, owner, reason)
            _write_run_document(store, key, run_dir)
        return "interrupted", reason
    except RunTakenOver as e:  # presumed dead and reclaimed by another process: its run now
        return "skipped", str(e)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, from the last checkpoint
        with _unless_taken_over():
            store.interrupt_run(run_id, owner, "interrupted (Ctrl-C twice); resumes from its last checkpoint")
        raise
    except Exception as e:  # a failed run is recorded and the sweep goes on
        reason = one_line(e)
        with _unless_taken_over():
            store.fail_run(run_id, owner, reason)
            _write_run_document(store, key, run_dir)
        return "failed", reason
    track(ctx, store, cfg)
    return "done", ""


def track(ctx: SweepContext, store: Store, cfg: RunConfig) -> None:
    """Log a run recorded done to the sweep's trackers (--log-to), from its run document. A tracker
    that fails loses only its copy: the run stays done, and one line says so."""
    trackers = open_trackers(ctx.execution.log_to, ctx.execution.mlflow_uri)
    if not trackers:
        return
    failures = []
    try:
        (doc,) = store.run_documents(keys=[cfg.key()])
    except SQLAlchemyError as e:
        failures = [(t.name, f"database error: {one_line(e)}") for t in trackers]
    else:
        for tracker in trackers:
            try:
                tracker.log_run(doc)
            except Exception as e:  # noqa: BLE001 - whatever the tracker raised, the run is done and stays so
                failures.append((tracker.name, one_line(e)))
    for name, reason in failures:
        print(
            f"warning: --log-to {name}: {cfg.label()} ({cfg.key()}) is done, but logging it failed: {reason}; "
            f"`vlbench db export --format {name}` logs it later",
            file=sys.stderr,
        )


def resume_folder(store: Store, key: str, today: dict[str, str]) -> Path | None:
    """The folder of the run's checkpoint when a resume may continue from it: a checkpoint written
    under another fingerprint is removed (the run starts afresh, not from what other code trained)."""
    (record,) = store.runs(keys=[key]) or [None]
    if record is None or not record.run_dir or not has_checkpoint(Path(record.run_dir) / "checkpoint"):
        return None
    if record.fingerprint != today:
        remove_checkpoint(Path(record.run_dir) / "checkpoint")
        return None
    return Path(record.run_dir)


def new_run_folder(sweep_dir: Path, key: str, today: dict[str, str]) -> Path:
    """runs/<sweep>/<key>; `<key>-<fingerprint>` when that folder holds a superseded run's files."""
    folder = sweep_dir / key
    return folder.with_name(f"{key}-{digest(today)[:8]}") if (folder / "run.json").exists() else folder


def _unless_taken_over():
    """Writes to a run that another process reclaimed meanwhile (this one was presumed dead) are dropped."""
    return contextlib.suppress(OwnershipError)


def resources_for(cfg: RunConfig, resources: dict, ctx: SweepContext, progress: Progress | None = None) -> Resources:
    """The run's shared resources, built once per group into `resources`: by the sweep before any
    worker starts, then loaded by each fresh process from the cache the sweep built."""
    group = resource_group(cfg)
    if group not in resources:
        resources[group] = build_resources(cfg, ctx.cache_dir, progress)
    return resources[group]


def distributed_rank(ctx: SweepContext, cfg_dict: dict, run_id: int, owner: str, run_dir: str) -> dict:
    """One rank of a DDP run (started by torchrun's launcher): rank 0 alone writes the store and the run folder."""
    from vlbench.distributed import process_group

    with process_group("cuda" if torch.cuda.is_available() else "cpu") as dist:
        backbone_registry.BACKBONES.update(ctx.specs)
        store = open_shared_store(ctx.db_url, ctx.stale_after) if dist.is_main else None
        cfg = RunConfig.from_dict(cfg_dict)
        stop = StopFlag()
        with stop.installed(SLURM_SIGNALS):  # Slurm signals every rank
            try:
                train_run(cfg, resources_for(cfg, {}, ctx), store, run_id, owner, Path(run_dir), ctx.execution, stop, dist)
            except Interrupted as e:
                return {"status": "interrupted", "epoch": e.epoch, "step": e.step}
        return {"status": "done"}


class SlurmRun:
    """One Slurm array task: one run, resumable (submitit's checkpointing protocol).

    Slurm signals USR2 before a time limit (submitit's --signal=USR2@90) or at a preemption; here it
    raises the stop flag like SIGTERM does, so the run writes a fresh checkpoint at its next step
    and is marked interrupted; then submitit's own handler takes over: it calls `checkpoint` and
    requeues the task (time-limit requeues bounded by --slurm-max-requeues). The requeued task,
    same job id, reclaims the run at once and resumes it."""

    def __init__(self, ctx: SweepContext):
        self.ctx = ctx

    def __call__(self, cfg_dict: dict) -> str:
        store = self.ctx.enter_process(self.ctx.execution.slurm.cpus)
        stop = StopFlag()
        with stop.installed(SLURM_SIGNALS) as submitit_handlers:
            outcome, detail = execute_run(RunConfig.from_dict(cfg_dict), self.ctx, store, {}, stop)
        requeue = submitit_handlers.get(signal.SIGUSR2)
        if outcome == "interrupted" and stop.reason == "SIGUSR2" and callable(requeue):
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint(), scontrol requeue, exit
        return f"{outcome}: {detail}" if detail else outcome

    def checkpoint(self, cfg_dict: dict):
        """submitit's requeue hook: the run's checkpoint is already on disk; run the task again."""
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(self.ctx), cfg_dict)


def submit_slurm(todo: list[RunConfig], ctx: SweepContext, store: Store, console: Console, summary: SweepSummary) -> None:
    """The pending runs as one job array; with --wait, the live view until every task has ended."""
    folder = Path(ctx.runs_dir) / ctx.sweep_name / "slurm"
    executor = slurm_executor(ctx.execution, folder, f"vlbench-{ctx.sweep_name}")
    try:
        jobs = executor.map_array(SlurmRun(ctx), [c.to_dict() for c in todo])
    except Exception as e:  # sbatch missing or refusing: a user-facing problem, said in one line
        raise UserError(f"--backend slurm: submitting the job array failed: {(str(e).strip().splitlines() or [type(e).__name__])[-1]}") from e
    summary.submitted = jobs[0].job_id.split("_")[0]
    console.print(f"submitted Slurm job array {summary.submitted} ({len(jobs)} task(s)); logs in {folder}")
    if not ctx.execution.wait:
        return
    with GridView(store, [(c.key(), c.label()) for c in todo], console, slurm=True) as view:
        while slurm_array_active(summary.submitted):  # squeue: sacct (accounting) is often not there
            view.refresh()
            time.sleep(2.0)


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
    images = None
    if cfg.data.images is not None:  # Table 3: CLIP trains, reading the image files
        images = check_images(suite, image_files(Path(cfg.data.images)), cfg.data.images)
        if backbones.vision is None:  # the paper's CLIP is not loaded for features: load it to train it
            encoder = load_encoder(backbones.spec.clip["name"], cfg.data.clip_weights, False, cache_dir, progress)
            backbones = replace(backbones, vision=encoder.vision, image_size=encoder.image_size)
    return Resources(backbones, suite, features, images)


def check_images(suite: Suite, files: dict[str, Path], folder: str) -> dict[str, Path]:
    """The image files of every example's images, or a UserError naming the folder and an example."""
    missing = set(suite.image_ids()) - set(files)
    if missing:
        task, split, uid, image_id = suite.first_use(missing)
        raise UserError(
            f"--images: {folder} has no file for {len(missing)} of the {len(suite.image_ids())} images, "
            f"e.g. {image_id!r} ({task} {split} example {uid})"
        )
    return files


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


def task_data(cfg: RunConfig, res: Resources, model: VLModel) -> dict[str, TaskData]:
    """The run's per-task data, as training and evaluation see it."""
    visual = visual_source(res, model)
    return {t: TaskData(ALL_TASKS[t], res.backbones.tokenizer, visual, res.suite.examples[t]) for t in cfg.tasks}


def visual_source(res: Resources, model: VLModel):
    """What the run's model reads: the frozen features, or, for a model that trains CLIP (Table 3), the
    images themselves (rendered scenes, or the real image files)."""
    if model.vision is None:
        return as_visual_source(res.features)
    image = res.suite.bank.render if res.images is None else image_file_reader(res.images)
    return Pixels(image, res.backbones.preprocess)


def train_run(
    cfg: RunConfig,
    res: Resources,
    store: Store | None,
    run_id: int,
    owner: str,
    run_dir: Path,
    execution: ExecutionOptions,
    stop: StopFlag,
    dist=None,
) -> None:
    """Train one claimed run to the end, resuming from its checkpoint; on a DDP rank other than 0
    (`store` None) only the training itself."""
    main = dist is None or dist.is_main
    model = build_model(cfg, res.backbones)
    counts = count_parameters(model)
    if main:
        store.record_params(run_id, owner, counts.trainable, counts.total, counts.convention, counts.components)
    data = task_data(cfg, res, model)
    checkpoints = CheckpointPolicy(run_dir / "checkpoint", execution.checkpoint_every)
    dev = device(dist)
    # peak memory of training alone (its steps, the per-epoch validation and the final test), after
    # the model and data are built: the same measure as `vlbench bench`'s, for every method
    with RunMonitor(store, run_id, owner, stop, execution.log_every) if main else nullcontext() as monitor:
        with PeakMemory(dev) as memory:
            result = train(
                model,
                data,
                cfg.optim,
                cfg.seed,
                dev,
                on_epoch_end=lambda epoch, metrics: store.record_metrics(run_id, owner, "val", epoch, metrics),
                on_step=monitor.step if main else lambda epoch, step, total, stats: None,
                checkpoints=checkpoints,
                stop_requested=stop,
                dist=dist,
                param_groups=param_groups(cfg, model),
            )
    if not main:
        return
    # the monitor's heartbeats have stopped: one landing after finish_run would find the run done and
    # take it for reclaimed by another process
    if result.resumed_from is not None:
        store.note_resume(run_id, owner, result.resumed_from)
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
            "peak_memory_mb": memory.mb,
            "peak_reserved_mb": memory.reserved_mb,
            "checkpoint_bytes": checkpoint.stat().st_size,
        },
    )
    _write_run_document(store, cfg.key(), run_dir)
    if not execution.keep_checkpoints:  # only once the run is done: a kill before this resumes, not restarts
        remove_checkpoint(checkpoints.folder)


def baseline_configs(configs: list[RunConfig]) -> list[RunConfig]:
    """One run of each baseline per synthetic data setting: the references every method must beat."""
    out = {}
    for cfg in configs:
        if cfg.data.source != "synthetic":
            continue
        for name in BASELINES:
            base = RunConfig(
                suite=cfg.suite, profile=cfg.profile, backbone=cfg.backbone, tasks=cfg.tasks, method=name,
                data=cfg.data, optim=OptimConfig(epochs=0),
            )  # fmt: skip
            out[base.key()] = base
    return list(out.values())


def run_baseline(cfg: RunConfig, res: Resources, store: Store, run_id: int, owner: str, run_dir: Path) -> None:
    """Score the baseline's predictions of every task's test split."""
    scores = {}
    for t in cfg.tasks:
        task, examples = ALL_TASKS[t], res.suite.examples[t]
        predictions = BASELINES[cfg.method].predict(task, examples["train"], examples["test"])
        scores[t] = task.score(examples["test"], predictions)
    store.record_metrics(run_id, owner, "test", 0, scores)
    store.finish_run(run_id, owner, {})
    _write_run_document(store, cfg.key(), run_dir)


def write_run_folder(run_dir: Path, cfg: RunConfig, test: dict, model: VLModel) -> None:
    """Resolved config, trainable-only weights and final metrics; each file written atomically."""
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    atomic_write(run_dir / "trainable.safetensors", lambda tmp: save_file(trainable, str(tmp)))
    for name, obj in (("config.json", cfg.to_dict()), ("metrics.json", {"test": test})):
        text = json.dumps(obj, indent=2, sort_keys=True)
        atomic_write(run_dir / name, lambda tmp: tmp.write_text(text))


def _write_run_document(store: Store, key: str, run_dir: Path) -> None:
    """run.json: the run as the store holds it (config, params, every metric, costs, provenance), so
    `vlbench db rebuild` can recreate the database from run folders alone."""
    (doc,) = store.run_documents(keys=[key])
    text = json.dumps(doc, indent=2, sort_keys=True)
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(text))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def device(dist=None) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank if dist is not None else 0)


def provenance(world_size: int = 1) -> dict:
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
        "world_size": world_size,
        "slurm_job_id": slurm_job_id(),
    }


def slurm_job_id() -> str | None:
    """The Slurm job (array task as JOB_TASK) this process runs in, if any."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


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
