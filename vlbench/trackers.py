"""Experiment trackers: each finished run, as the store records it, logged to MLflow or TensorBoard.

A tracker logs from the run's document (`Store.run_documents`: config, parameter counts by
component, val metrics per epoch, test metrics, costs, provenance, curves with their steps), read
once the run is recorded done. So every backend (this process, local workers, Slurm tasks, the
parent of DDP ranks) logs a run the same way, and `vlbench db export --format mlflow|tensorboard`
logs runs that finished earlier exactly as a sweep would have.

    mlflow       one MLflow run per vlbench run in the experiment named after the sweep: the config
                 flattened as params, curves and metrics as metrics with their steps, the run folder's
                 files as artifacts. Default store: a SQLite file in `mlruns/` next to the runs folder
                 (MLflow's own format, no server; MLflow 3 refuses its older plain-folder store
                 unless MLFLOW_ALLOW_FILE_STORE=true).
    tensorboard  event files in the run folder (`runs/<sweep>/<key>/tensorboard/`).

The libraries are an optional extra (`pip install 'vlbench[trackers]'`) and are imported only
when a tracker is used, so the command line starts fast and works without them.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from vlbench.config import UserError
from vlbench.store import COST_KEYS, PROVENANCE_KEYS, Store

INSTALL_HINT = "pip install 'vlbench[trackers]'"
ARTIFACTS = ("config.json", "metrics.json", "run.json", "trainable.safetensors")  # of the run folder, where present
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's limits for one log_batch call


class Tracker(Protocol):
    name: str

    def check(self, sweeps: Iterable[str]) -> None:
        """Up front, before any run starts: a UserError (one line) when this tracker cannot log these sweeps' runs."""

    def log_run(self, doc: dict) -> bool:
        """Log one finished run from its run document; False when it was logged already."""


def require(module: str, tracker: str):
    """The tracker's library, or the one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name == module.split(".")[0]:
            raise UserError(f"--log-to {tracker}: {e.name} is not installed: {INSTALL_HINT}") from e
        raise UserError(f"--log-to {tracker}: {module} does not import ({type(e).__name__}: {e}): {INSTALL_HINT}") from e


def first_line(e: BaseException) -> str:
    """What an error says, in one line (MLflow's messages run to paragraphs)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """The resolved config as `section.name` -> value: scalars as they are, lists (and empty dicts) as JSON."""
    flat: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[f"{prefix}{name}"] = json.dumps(value)
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def scalars(doc: dict) -> list[tuple[str, float, int]]:
    """Every number of the run as (name, value, step): training curves at their optimizer steps, val
    metrics at their epochs, test metrics at the last epoch, parameter counts and costs at step 0."""
    out = [(f"train/{c['name']}", c["value"], c["step"]) for c in doc["curves"]]
    out += [(f"{m['split']}/{m['task']}/{m['name']}", m["value"], m["epoch"]) for m in doc["metrics"]]
    params = doc["params"]
    if params is not None:
        out += [(f"param_counts/{k}", params[k], 0) for k in ("trainable", "total", "percent")]
        for component, counts in params["components"].items():
            out += [(f"param_counts/{component}/{k}", n, 0) for k, n in counts.items()]
    run = doc["run"]
    out += [(f"cost/{k}", run[k], 0) for k in COST_KEYS if run[k] is not None]
    return out


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class MlflowTracker:
    """One MLflow run per vlbench run: run name = the run's label; tags sweep, key, fingerprint,
    status, provenance (git commit as MLflow's `mlflow.source.git.commit`); the config as params."""

    name = "mlflow"

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None
        self._experiments: dict[str, str] = {}  # sweep -> experiment id

    @property
    def client(self):
        if self._client is None:
            mlflow = require("mlflow", self.name)
            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        return self._client

    def check(self, sweeps: Iterable[str]) -> None:
        require("mlflow", self.name)
        try:  # the client opens the store; a store that cannot be opened or written fails here, before anything trains
            self.client
            for sweep in sweeps:
                self._experiment(sweep)
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds; the user needs the one line
            raise UserError(f"--mlflow-uri {self.uri}: {first_line(e)}") from e

    def _experiment(self, sweep: str) -> str:
        """The sweep's experiment, created on first use: by `check`, before a sweep's workers start."""
        if sweep not in self._experiments:
            found = self.client.get_experiment_by_name(sweep)
            self._experiments[sweep] = (
                found.experiment_id if found is not None
                else self.client.create_experiment(sweep, artifact_location=self._artifact_location(sweep))
            )  # fmt: skip
        return self._experiments[sweep]

    def _artifact_location(self, sweep: str) -> str | None:
        # a SQLite store's default artifact root is ./mlruns under whatever folder the process runs
        # in (a Slurm task's may differ); beside the database file it is the same for every process
        if not self.uri.startswith("sqlite:///"):
            return None  # a server or a folder store places them itself
        return (Path(self.uri.removeprefix("sqlite:///")).resolve().parent / "artifacts" / sweep).as_uri()

    def log_run(self, doc: dict) -> bool:
        from mlflow.entities import Metric, Param

        run = doc["run"]
        experiment_id = self._experiment(doc["sweep"]["name"])
        same = f"tags.key = '{run['key']}'" + (f" and tags.fingerprint = '{run['fingerprint']}'" if run["fingerprint"] else "")
        if self.client.search_runs([experiment_id], same, max_results=1):
            return False
        tags = {"sweep": doc["sweep"]["name"], "key": run["key"], "fingerprint": run["fingerprint"], "status": run["status"]}
        for k in PROVENANCE_KEYS:
            if run[k] is not None:
                name = "mlflow.source.git.commit" if k == "git_commit" else k
                tags[name] = json.dumps(run[k], sort_keys=True) if isinstance(run[k], dict) else str(run[k])
        created = self.client.create_run(
            experiment_id, start_time=int(_seconds(run["started_at"]) * 1000), run_name=run["label"],
            tags={k: v for k, v in tags.items() if v is not None},
        )  # fmt: skip
        run_id = created.info.run_id
        at = int(_seconds(run["finished_at"]) * 1000)
        params = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flat_config(run["config"]).items()]
        metrics = [Metric(name, float(value), at, step) for name, value, step in scalars(doc)]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])
        for name in ARTIFACTS:
            path = Path(run["run_dir"]) / name
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED", end_time=at)
        return True


class TensorBoardTracker:
    """Event files in the run folder's `tensorboard/`: every number as a scalar at its step, the
    config as text and as hparams (with the test metrics), so TensorBoard's HParams view compares
    the sweep's runs when pointed at `runs/<sweep>/`."""

    name = "tensorboard"

    def check(self, sweeps: Iterable[str]) -> None:
        require("tensorboard", self.name)  # first: torch's writer without it would say less
        require("torch.utils.tensorboard", self.name)

    def log_run(self, doc: dict) -> bool:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        run = doc["run"]
        if not run["run_dir"] or not Path(run["run_dir"]).is_dir():
            raise FileNotFoundError(f"the run folder {run['run_dir']} is gone")
        folder = Path(run["run_dir"]) / "tensorboard"
        # written whole into a temporary folder, then put in place: a reader (or an export that logs the
        # run again, e.g. after a re-scoring) never sees half of it or two generations mixed
        tmp = folder.with_name(f".tmp-{os.getpid()}-tensorboard")
        shutil.rmtree(tmp, ignore_errors=True)
        walltime = _seconds(run["finished_at"])
        numbers = scalars(doc)
        config = flat_config(run["config"])
        writer = SummaryWriter(log_dir=str(tmp))
        try:
            for name, value, step in numbers:
                writer.add_scalar(name, value, step, walltime=walltime)
            writer.add_text("config", f"```json\n{json.dumps(run['config'], indent=2, sort_keys=True)}\n```", 0, walltime)
            test = {name: value for name, value, _ in numbers if name.startswith("test/")}
            hparam_values = {k: "null" if v is None else v for k, v in config.items()}
            for summary in hparams(hparam_values, test):
                writer.file_writer.add_summary(summary, walltime=walltime)
        finally:
            writer.close()
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return True


TRACKERS = {"mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}


def default_mlflow_uri(runs_dir: str | Path) -> str:
    """`mlruns/mlflow.db` next to the runs folder, as an absolute URI every process opens alike."""
    return f"sqlite:///{(Path(runs_dir).resolve().parent / 'mlruns' / 'mlflow.db').as_posix()}"


def open_trackers(names: tuple[str, ...], mlflow_uri: str | None) -> list[Tracker]:
    return [MlflowTracker(mlflow_uri) if name == "mlflow" else TRACKERS[name]() for name in names]


@dataclass
class LogSummary:
    logged: int = 0
    already: int = 0  # logged before (MLflow: a run with its key and fingerprint; never for TensorBoard)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)


def log_runs(store: Store, name: str, mlflow_uri: str, sweep: str | None = None) -> LogSummary:
    """Log every done run (of `sweep`) to the tracker `name` (`vlbench db export --format mlflow|tensorboard`)."""
    (tracker,) = open_trackers((name,), mlflow_uri)
    docs = [d for d in store.run_documents(sweep=sweep) if d["run"]["status"] == "done"]
    tracker.check(sorted({d["sweep"]["name"] for d in docs}))
    summary = LogSummary()
    for doc in docs:
        try:
            logged = tracker.log_run(doc)
        except Exception as e:  # noqa: BLE001 - one run that cannot be logged leaves the others to go
            summary.failed.append((doc["run"]["label"], f"{type(e).__name__}: {first_line(e)}"))
            continue
        if logged:
            summary.logged += 1
        else:
            summary.already += 1
    return summary
