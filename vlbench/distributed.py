"""One training job on K processes: the process group of a rank, and a local launcher.

A rank is a process started by torchrun's machinery (the `torchrun` command, Slurm/submitit with
torchrun's environment variables, or `launch` below). Inside it, `init_from_env` joins the process
group and returns a `Dist`, which `engine.train(dist=...)` takes; the rank destroys the group when
it is done (`destroy`, or `with process_group(device_type) as dist:` for both).

`launch(nproc, fn, *args)` runs `fn(*args)` on nproc local processes through
`torch.distributed.launcher.api.elastic_launch` (one node, c10d rendezvous on 127.0.0.1, no
restarts, spawn) and returns every rank's return value; a rank that fails raises one `LaunchError`
naming the rank and its exception, the other ranks are stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from vlbench.config import one_line


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # "gloo" (CPU) | "nccl" (CUDA)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this rank trains on: cuda:local_rank under NCCL, the CPU under gloo."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


class LaunchError(RuntimeError):
    """A rank of `launch` failed: the message names the rank and its error."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank
        self.error = message

    def __reduce__(self):
        return (type(self), (self.rank, self.error))


ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_from_env(device_type: str = "cpu") -> Dist:
    """Join the process group described by torchrun's environment variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on CPU, NCCL on CUDA with this rank on cuda:LOCAL_RANK."""
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_from_env: {', '.join(missing)} not set; start the ranks with torchrun or vlbench.distributed.launch"
        )
    rank, world_size, local_rank = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device_type == "cuda":
        backend = "nccl"
        torch.cuda.set_device(local_rank)
        kwargs = {"device_id": torch.device("cuda", local_rank)}
    elif device_type == "cpu":
        backend, kwargs = "gloo", {}
    else:
        raise ValueError(f"init_from_env: device type {device_type!r} is neither 'cpu' nor 'cuda'")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def destroy() -> None:
    """Leave the process group (a no-op when there is none)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_type: str = "cpu") -> Iterator[Dist]:
    """`init_from_env` on entry, `destroy` on exit (also when the body raises)."""
    dist = init_from_env(device_type)
    try:
        yield dist
    finally:
        destroy()


def thread_environment(threads: int) -> dict[str, str]:
    """The variables that size the OpenMP/MKL/OpenBLAS thread pools of a process started with them."""
    return {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def cores_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_thread_share(nproc: int, budget: int | None = None) -> int:
    """Intra-op threads for each of nproc processes sharing `budget` threads (default: this machine's cores)."""
    return max(1, (budget or cores_available()) // nproc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn: Callable, threads: int, folder: str, *args: Any) -> Any:
    """What each launched process runs: its thread share, then fn. Its pid goes under `folder` (for
    launch to forward signals); an exception is recorded there (rank, time, type, message, innermost
    frame) for launch to name the root cause. The process group is left even when fn forgot to."""
    torch.set_num_threads(threads)
    rank = int(os.environ.get("RANK", "-1"))
    _write_json(Path(folder) / f"pid{rank}.json", os.getpid())
    try:
        return fn(*args)
    except BaseException as e:
        record = {"rank": rank, "time": time.time(), "error": one_line(e), "where": _innermost_frame(e)}
        _write_json(Path(folder) / f"rank{rank}.json", record)
        raise
    finally:
        destroy()


def launch(nproc: int, fn: Callable, *args: Any) -> dict[int, Any]:
    """Run `fn(*args)` on `nproc` local processes (torchrun's elastic agent: one node, c10d rendezvous
    on 127.0.0.1 at a free port, max_restarts=0, spawn) and return {rank: fn's return value}.

    `fn` and `args` must be picklable (a module-level function); inside, fn calls `init_from_env`.
    Each rank gets its share of this process's threads (and the OpenMP/MKL variables). A failure in any
    rank stops the others and raises one LaunchError naming the failing rank and its error.

    Signals (main thread): SIGTERM is forwarded to the ranks and launch keeps waiting, so ranks that
    stop on it (checkpoint, return) are collected as usual; a first SIGINT is left to the ranks (a
    terminal's Ctrl-C reaches them all), a second one stops them and raises KeyboardInterrupt. Python
    handlers installed before launch are called too, and are back in place when it returns."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"launch: nproc must be >= 1, not {nproc}")
    threads = cpu_thread_share(nproc, torch.get_num_threads())  # a local worker's ranks share the worker's threads
    with tempfile.TemporaryDirectory(prefix="vlbench-launch-") as tmp:
        folder = Path(tmp) / "ranks"
        folder.mkdir()
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(tmp) / "logs")),
            run_id=f"vlbench-{uuid.uuid4().hex[:12]}",
            rdzv_backend="c10d",
            rdzv_endpoint=f"127.0.0.1:{free_port()}",
            max_restarts=0,
            start_method="spawn",
            monitor_interval=0.1,
            local_addr="127.0.0.1",
            signals_to_handle="",  # the agent would kill the ranks on the first signal: launch handles them
        )
        with environment(**thread_environment(threads)), _quiet(*_AGENT_LOGGERS), _forwarding_signals(folder):
            try:
                return elastic_launch(config, _rank_main)(fn, threads, str(folder), *args)
            except ChildFailedError as e:
                rank, message = root_cause(folder, e.failures)
            except BaseException:  # KeyboardInterrupt, or the agent itself failed: no rank outlives launch
                _stop_ranks(folder)
                raise
        if message.startswith("KeyboardInterrupt"):  # Ctrl-C reached the ranks
            raise KeyboardInterrupt
        raise LaunchError(rank, message)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _rank_pids(folder: Path) -> list[int]:
    pids = []
    for path in Path(folder).glob("pid*.json"):
        try:
            pids.append(int(json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return pids


def _signal_ranks(folder: Path, signum: int) -> None:
    for pid in _rank_pids(folder):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _stop_ranks(folder: Path, grace: float = 5.0) -> None:
    """SIGTERM every rank still alive, SIGKILL those left after `grace` seconds."""
    _signal_ranks(folder, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in _rank_pids(folder)):
        time.sleep(0.05)
    _signal_ranks(folder, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by the agent) counts as gone
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    return True


@contextlib.contextmanager
def _forwarding_signals(folder: Path) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    interrupts = []

    def handle(signum, frame):
        if signum == signal.SIGTERM:
            _signal_ranks(folder, signal.SIGTERM)
        else:
            interrupts.append(signum)
        before = previous[signum]
        if callable(before) and before is not signal.default_int_handler:
            before(signum, frame)  # e.g. the caller's own stop flag (which may raise KeyboardInterrupt)
        elif signum == signal.SIGINT and len(interrupts) > 1:
            raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


_AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")

# errors a rank raises because another rank died under it: not the root cause when there is another
_PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "DistBackendError", "NCCL communicator")


def root_cause(folder: Path, failures: dict[int, Any]) -> tuple[int, str]:
    """(rank, one-line message) of the failure that caused the others. The ranks' own records: an
    error of its own over a broken connection to a dead peer, then the earliest. Else (a rank killed
    by a signal, or dead before it could record) what the elastic agent saw."""
    records = []
    for path in Path(folder).glob("rank*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if records:
        r = min(records, key=lambda r: (any(p in r["error"] for p in _PEER_ERRORS), r["time"], r["rank"]))
        return r["rank"], f"{r['error']} ({r['where']})" if r["where"] else r["error"]
    rank, failure = min(failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if not message or failure.exitcode >= 0 and "pytorch.org/docs" in str(message):
        message = f"exit code {failure.exitcode}"
    return rank, str(message)


def _innermost_frame(e: BaseException) -> str:
    """'file.py:12 in fn' of the innermost frame of the exception's traceback in the caller's code
    (not in an installed package or the standard library), else of the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    library = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})
    own = [f for f in frames if not f.filename.startswith(library)]
    last = (own or frames)[-1]
    return f"at {os.path.basename(last.filename)}:{last.lineno} in {last.name}"


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for what starts inside (e.g. child processes), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet(*prefixes: str) -> Iterator[None]:
    """The elastic agent logs every start, stop and failure at INFO/WARNING/ERROR on loggers with
    levels of their own: launch reports failures itself, so only CRITICAL gets through meanwhile."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)] + list(prefixes)
    loggers = [logging.getLogger(n) for n in dict.fromkeys(names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
