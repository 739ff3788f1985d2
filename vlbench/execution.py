"""Where a sweep's runs execute, and what keeps them safe there.

- `local`, one worker: the runs one after another in this process (the default).
- `local`, N workers: N processes, each pulling runs from the sweep's list by claiming them in the
  store (the store's claims are the only coordination, as on a cluster); one GPU each
  (CUDA_VISIBLE_DEVICES), or cores // N threads each on CPU.
- `slurm`: the pending runs as one Slurm job array through submitit; a task that is preempted or
  reaches its time limit is requeued (submitit's checkpointing protocol) and resumes from its run's
  last checkpoint.
Each run may itself span K processes (`nproc_per_run`, DistributedDataParallel via torchrun's launcher).

Also here: the heartbeat thread of a running run (`RunMonitor`) and the stop flag that SIGINT/SIGTERM
raise (`StopFlag`): the engine checkpoints at the next step and the run is marked interrupted.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlbench.config import UserError
from vlbench.distributed import cpu_thread_share, environment, thread_environment
from vlbench.store import OwnershipError, Store
from vlbench.trackers import TRACKERS

HEARTBEAT_S = float(os.environ.get("VLBENCH_HEARTBEAT_S", 60))  # how often an idle owner proves it is alive
PROGRESS_S = 2.0  # how often fresh progress (epoch, step, ETA) reaches the store for the live view
CURVE_POINTS = 100  # training-curve points per run (loss, lr, samples/s), unless --log-every says otherwise
BACKENDS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60  # per array task; a task at its limit is requeued and resumes
    gpus: int = 0  # per run
    cpus: int = 2  # per run
    array_parallelism: int = 64
    extra: tuple[tuple[str, str], ...] = ()  # sbatch parameters passed through (--slurm-extra KEY=VALUE)
    max_requeues: int = 3  # preemptions/timeouts a task may be requeued after


@dataclass(frozen=True)
class ExecutionOptions:
    backend: str = "local"
    workers: int | None = None  # local: runs at once [default: the GPU count, 1 on CPU]
    nproc_per_run: int = 1  # processes per run (DDP)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    keep_checkpoints: bool = False  # keep a finished run's full checkpoint (else only its trainable weights)
    retry_failed: bool = False
    rescore: bool = False  # a done run whose fingerprint differs only in scoring is re-scored, not retrained
    log_every: int | None = None  # training-curve point every N optimizer steps; None: CURVE_POINTS per run
    wait: bool = False  # slurm: wait for the array, showing the live view
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    log_to: tuple[str, ...] = ()  # trackers each finished run is logged to (vlbench.trackers.TRACKERS)
    mlflow_uri: str | None = None  # MLflow's tracking URI; the sweep resolves None to mlruns/ next to runs/

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"--backend: unknown backend '{self.backend}' (choose from {', '.join(BACKENDS)})")
        for flag, value, least in (
            ("--workers", self.workers, 1), ("--nproc-per-run", self.nproc_per_run, 1),
            ("--checkpoint-every", self.checkpoint_every, 0), ("--slurm-time", self.slurm.time_min, 1),
            ("--slurm-gpus", self.slurm.gpus, 0), ("--slurm-cpus", self.slurm.cpus, 1),
            ("--slurm-array-parallelism", self.slurm.array_parallelism, 1),
        ):  # fmt: skip
            if value is not None and value < least:
                raise UserError(f"{flag}: must be at least {least}, got {value}")
        unknown = [name for name in self.log_to if name not in TRACKERS]
        if unknown:
            raise UserError(f"--log-to: unknown tracker '{unknown[0]}' (choose from {', '.join(TRACKERS)})")
        if self.mlflow_uri is not None and "mlflow" not in self.log_to:
            raise UserError("--mlflow-uri goes with --log-to mlflow")
        if self.slurm.max_requeues < 0:
            raise UserError(f"--slurm-max-requeues: must be at least 0, got {self.slurm.max_requeues}")
        if self.backend == "slurm" and self.workers not in (None, 1):
            raise UserError("--workers: Slurm runs the array's tasks in parallel (--slurm-array-parallelism)")
        if self.backend == "local" and (self.wait or self.slurm != SlurmOptions()):
            raise UserError("--wait and the --slurm-* flags go with --backend slurm")
        gpus = len(visible_gpus())
        if self.backend == "local" and gpus and self.local_workers() * self.nproc_per_run > gpus:
            raise UserError(
                f"--workers/--nproc-per-run: {self.local_workers()} worker(s) x {self.nproc_per_run} process(es) "
                f"need {self.local_workers() * self.nproc_per_run} GPUs; {gpus} visible"
            )
        if self.backend == "slurm" and self.slurm.gpus and self.slurm.gpus < self.nproc_per_run:
            raise UserError(f"--slurm-gpus: {self.slurm.gpus} GPU(s) per run cannot hold --nproc-per-run {self.nproc_per_run}")

    def local_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, len(visible_gpus()) // self.nproc_per_run) if torch.cuda.is_available() else 1


def use_threads(threads: int) -> None:
    os.environ.update(thread_environment(threads))
    torch.set_num_threads(threads)


class RunTakenOver(Exception):
    """Another process reclaimed this run (this one was presumed dead): stop at once, write nothing."""


class StopFlag:
    """Raised by SIGINT or SIGTERM (and, in a Slurm task, SIGUSR2); the engine polls it after every
    step, checkpoints and stops. A second SIGINT stops at once (KeyboardInterrupt), as a user pressing
    Ctrl-C twice expects. When the run was taken over, polling it raises RunTakenOver instead, so
    the engine leaves the new owner's checkpoint alone."""

    def __init__(self):
        self.reason: str | None = None
        self.taken_over = False

    def __call__(self) -> bool:
        if self.taken_over:
            raise RunTakenOver("another process reclaimed this run; it stopped without writing")
        return self.reason is not None

    def _handle(self, signum, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        """Handle `signals` while inside (main thread only; elsewhere the caller's handlers stay).
        Yields the handlers it replaced."""
        if threading.current_thread() is not threading.main_thread():
            yield {}
            return
        old = {s: signal.signal(s, self._handle) for s in signals}
        try:
            yield old
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


class RunMonitor:
    """A running run's heartbeat, progress and training curve, written by a background thread so that
    long steps or evaluations never make a live run look stale and the training step never waits for
    the database. Every `log_every` steps (default: CURVE_POINTS points per run) a curve point holds
    the mean loss since the last point, the learning rate and the samples/s; points go out in batches
    with the heartbeat. If the run is taken over by another process (this one was presumed dead), the
    stop flag says so at the next step."""

    def __init__(self, store: Store, run_id: int, owner: str, stop: StopFlag, log_every: int | None = None):
        self.store, self.run_id, self.owner, self.stop = store, run_id, owner, stop
        self.log_every = log_every
        self.progress: dict[str, Any] = {"phase": "starting"}
        self._points: list[dict] = []  # curve points not yet written
        self._points_lock = threading.Lock()
        self._since: dict | None = None  # loss summed, steps, samples and seconds at the last point
        self._first_step: tuple[int, float] | None = None
        self._written: dict | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> RunMonitor:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._done.set()
        self._thread.join()
        try:  # the last points, while the run is still ours and running
            self._write_points()
        except OwnershipError:
            self.stop.taken_over = True
        # the flag is this run's: the process's next run starts without it
        taken_over, self.stop.taken_over = self.stop.taken_over, False
        if taken_over and exc_type is None:  # reclaimed after the engine's last poll: write nothing more
            raise RunTakenOver("another process reclaimed this run; it stopped without writing")

    def step(self, epoch: int, step: int, total_steps: int, stats: dict | None = None) -> None:
        if stats is not None:
            self._curve(epoch, step, total_steps, stats)
        now = time.monotonic()
        if self._first_step is None:  # measure the rate from this process's own steps (a resume starts mid-way)
            self._first_step = (step, now)
        first, t0 = self._first_step
        eta = (now - t0) / (step - first) * (total_steps - step) if step > first else None
        self.progress = {"phase": "train", "epoch": epoch, "step": step, "total_steps": total_steps, "eta_s": eta}

    def _curve(self, epoch: int, step: int, total_steps: int, stats: dict) -> None:
        if self._since is None:  # this process's first step (a resume starts mid-way): rates count from here
            self._since = {"loss": 0.0, "steps": 0, "samples": stats["samples"], "seconds": stats["train_seconds"]}
        since = self._since
        since["loss"] += stats["loss"]
        since["steps"] += 1
        every = self.log_every or max(1, total_steps // CURVE_POINTS)
        if step % every and step != total_steps:
            return
        samples, seconds = stats["samples"] - since["samples"], stats["train_seconds"] - since["seconds"]
        point = {"step": step, "epoch": epoch, "loss": since["loss"] / since["steps"], "lr": stats["lr"],
                 "samples_per_s": samples / seconds if seconds > 0 else None}  # fmt: skip
        with self._points_lock:
            self._points.append(point)
        self._since = {"loss": 0.0, "steps": 0, "samples": stats["samples"], "seconds": stats["train_seconds"]}

    def _write_points(self) -> None:
        with self._points_lock:
            points, self._points = self._points, []
        if points:
            self.store.record_curve(self.run_id, self.owner, points)

    def _beat(self) -> None:
        last = 0.0
        while not self._done.wait(PROGRESS_S):
            progress = self.progress
            try:
                self._write_points()
            except OwnershipError:
                self.stop.taken_over = True
                return
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the run (these points are lost)
                pass
            if progress == self._written and time.monotonic() - last < HEARTBEAT_S:
                continue
            try:
                self.store.heartbeat(self.run_id, self.owner, progress)
            except OwnershipError:  # another process reclaimed the run: stop training it
                self.stop.taken_over = True
                return
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the run; the next beat retries
                continue
            self._written, last = progress, time.monotonic()


# ---------------------------------------------------------------------------------------------
# local worker processes


def start_local_workers(n: int, target, args: tuple, gpus_per_worker: int) -> list[multiprocessing.Process]:
    """N spawned processes running `target(worker_index, *args)`, each with its share of the cores
    (threads) or its own GPUs (CUDA_VISIBLE_DEVICES)."""
    ctx = multiprocessing.get_context("spawn")  # no forked CUDA state or torch thread pools
    threads = cpu_thread_share(n)  # oversubscribed threads make 2 runs on 2 cores far slower than 1 after 1
    visible = visible_gpus()
    processes = []
    for i in range(n):
        mine = visible[i * gpus_per_worker : (i + 1) * gpus_per_worker]
        gpus = ",".join(mine) if gpus_per_worker else None
        with environment(**thread_environment(threads), **({"CUDA_VISIBLE_DEVICES": gpus} if gpus else {})):
            p = ctx.Process(target=target, args=(i, threads, *args), name=f"vlbench-worker-{i}")
            p.start()
        processes.append(p)
    return processes


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (workers split these)."""
    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g.strip() for g in given.split(",") if g.strip()] if given else [str(i) for i in range(torch.cuda.device_count())]


def stop_workers(processes: list[multiprocessing.Process], signum: int = signal.SIGTERM) -> None:
    for p in processes:
        if p.is_alive():
            os.kill(p.pid, signum)


# ---------------------------------------------------------------------------------------------
# Slurm (submitit)


def slurm_executor(options: ExecutionOptions, folder: Path, name: str):
    import submitit

    s = options.slurm
    # requeues after a time limit are bounded here (submitit counts them); preemptions are always requeued
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=s.max_requeues)
    params: dict[str, Any] = dict(
        name=name,
        timeout_min=s.time_min,
        nodes=1,
        tasks_per_node=1,  # the run's own launcher starts its K DDP processes
        cpus_per_task=s.cpus,
        slurm_array_parallelism=s.array_parallelism,
    )
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.gpus:
        params["gpus_per_node"] = s.gpus
    if s.extra:
        params["slurm_additional_parameters"] = dict(s.extra)
    executor.update_parameters(**params)
    return executor


def slurm_array_active(array_id: str) -> bool:
    """Whether any task of the job array is still pending, running or requeued (squeue lists it)."""
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", array_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell now; ask again
    if out.returncode != 0:  # squeue forgets ended jobs after a while: then the array is over
        return "Invalid job id" not in out.stderr
    return bool(out.stdout.strip())


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job id (array tasks as JOB_TASK), from squeue, then sacct for ended ones."""
    import subprocess

    states: dict[str, str] = {}
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return states
    for cmd in (["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)]):  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            parts = line.replace("|", " ").split()
            if len(parts) >= 2 and parts[0] not in states:
                states[parts[0]] = parts[1]
    return states
