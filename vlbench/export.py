"""The store's runs out to files (`vlbench db export`) and back in from run folders (`vlbench db rebuild`).

Both go through the store's run documents (Store.run_documents / Store.import_run): the document a
run folder keeps as run.json is the one the database holds, so a lost database can be rebuilt from
the run folders, and an export is one flat row per run of the same content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from vlbench.config import UserError
from vlbench.files import atomic_write
from vlbench.store import COST_KEYS, Store

EXPORT_FORMATS = ("csv", "json", "parquet")
RUN_COLUMNS = (
    "key", "label", "method", "sharing", "hidden_dim", "seed", "profile", "suite", "status", "error",
    "started_at", "finished_at",
)  # fmt: skip
PROVENANCE_COLUMNS = ("host", "device", "git_commit", "world_size", "slurm_job_id")


def export_row(doc: dict, nested: bool) -> dict:
    """One run as one flat row; `nested` keeps config and versions as objects (JSON), else as JSON text."""
    run = doc["run"]
    row = {"sweep": doc["sweep"]["name"], **{k: run[k] for k in RUN_COLUMNS}}
    params = doc["params"] or {}
    row.update({f"params.{k}": params.get(k) for k in ("trainable", "total", "percent")})
    for m in doc["metrics"]:
        if m["split"] == "test":
            row[f"test.{m['task']}.{m['name']}"] = m["value"]
    row.update({f"cost.{k}": run[k] for k in COST_KEYS})
    row.update({k: run[k] for k in PROVENANCE_COLUMNS})
    for name in ("versions", "config"):
        row[name] = run[name] if nested else json.dumps(run[name], sort_keys=True)
    return row


def export_runs(store: Store, path: Path, fmt: str, sweep: str | None = None) -> int:
    """Write every run (of `sweep`) to `path` as csv, json or parquet; returns the number of runs."""
    docs = store.run_documents(sweep=sweep)
    rows = [export_row(d, nested=fmt == "json") for d in docs]
    if fmt == "json":
        text = json.dumps(rows, indent=2)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    else:
        frame = pd.DataFrame(rows)
        writer = frame.to_csv if fmt == "csv" else frame.to_parquet
        atomic_write(path, lambda tmp: writer(tmp, index=False))
    return len(rows)


@dataclass
class RebuildSummary:
    imported: int = 0
    present: int = 0  # already in the database
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def rebuild(source: Path, store: Store) -> RebuildSummary:
    """Import every run folder's run.json under `source` (runs/<sweep>/<key>/run.json) into `store`."""
    if not Path(source).is_dir():
        raise UserError(f"--from: {source} is not a folder of run folders")
    summary = RebuildSummary()
    for path in sorted(Path(source).glob("*/*/run.json")):
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or not {"sweep", "run", "params", "metrics"} <= set(doc):
                raise ValueError("not a vlbench run document")
            if doc["run"].get("status") not in ("done", "failed", "interrupted"):
                raise ValueError(f"status {doc['run'].get('status')!r} is not a finished run's")
            imported = store.import_run(doc)
        except (OSError, ValueError, KeyError, TypeError, SQLAlchemyError) as e:
            summary.unreadable.append((path, f"{type(e).__name__}: {e}"))
            continue
        if imported:
            summary.imported += 1
        else:
            summary.present += 1
    return summary
