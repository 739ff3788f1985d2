"""The live view of a sweep's grid, read from the store (so it shows every backend's runs alike).

In a terminal: a table of each run's state (pending / running / done / failed / interrupted / stale),
epoch and step, and ETA, redrawn every second. Elsewhere (CI, nohup, a log file): one plain line per
change of a run's state or epoch.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from rich.console import Console
from rich.live import Live
from rich.table import Table

from vlbench.store import RunRecord, Store

COLOURS = {"done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow", "stale": "magenta"}


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(run: RunRecord | None) -> tuple[str, str, str]:
    """(state, where, eta) of a run as the view shows them."""
    if run is None:
        return "pending", "", "-"
    p = run.progress or {}
    where = ""
    if run.status == "running" and "step" in p:
        where = f"epoch {p['epoch'] + 1} step {p['step']}/{p['total_steps']}"
        if p.get("phase") not in (None, "train"):
            where += f" ({p['phase']})"
    elif run.status == "running":
        where = p.get("phase", "")
    elif run.error:
        where = run.error
    eta = _eta(p.get("eta_s")) if run.status == "running" else "-"
    return run.state, where, eta


class GridView:
    """Polls the store for the given (key, label) runs: `refresh()` from the caller's loop, or
    `poll_in_background()` while this process trains (`with GridView(...) as view:`)."""

    def __init__(self, store: Store, runs: list[tuple[str, str]], console: Console, slurm: bool = False):
        self.store, self.runs, self.console, self.slurm = store, runs, console, slurm
        self.plain = not console.is_terminal
        self._seen: dict[str, tuple] = {}
        self._live: Live | None = None
        self._stop = threading.Event()
        self.started = time.monotonic()

    def records(self) -> dict[str, RunRecord]:
        return {r.key: r for r in self.store.runs(keys=[k for k, _ in self.runs])}

    def table(self, records: dict[str, RunRecord]) -> Table:
        counts: dict[str, int] = {}
        table = Table("run", "state", "progress", "ETA", *(["slurm job"] if self.slurm else []), box=None)
        for key, label in self.runs:
            state, where, eta = describe(records.get(key))
            counts[state] = counts.get(state, 0) + 1
            colour = COLOURS.get(state, "dim")
            job = [records[key].slurm_job_id or "-" if key in records else "-"] if self.slurm else []
            table.add_row(label, f"[{colour}]{state}[/{colour}]", where, eta, *job)
        elapsed = int(time.monotonic() - self.started)
        table.title = f"{len(self.runs)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table.caption = f"{elapsed // 60}m{elapsed % 60:02d}s elapsed"
        return table

    def refresh(self) -> dict[str, RunRecord]:
        try:
            records = self.records()
        except Exception:  # noqa: BLE001 - a busy database delays the view, never the runs
            return {}
        if self.plain:
            self._log_changes(records)
        elif self._live is not None:
            self._live.update(self.table(records))
        return records

    def _log_changes(self, records: dict[str, RunRecord]) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        for key, label in self.runs:
            run = records.get(key)
            state, where, eta = describe(run)
            epoch = (run.progress or {}).get("epoch") if run is not None and run.status == "running" else None
            if self._seen.get(key, ("pending", None)) != (state, epoch):
                detail = f" {where}" if where else ""
                self.console.print(f"{stamp} {label}: {state}{detail}" + (f" (ETA {eta})" if eta != "-" else ""),
                                   highlight=False, soft_wrap=True)  # fmt: skip
                self._seen[key] = (state, epoch)

    def __enter__(self) -> GridView:
        if not self.plain:
            self._live = Live(self.table({}), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.refresh()
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def poll_in_background(self, interval: float = 1.0) -> threading.Thread:
        """Refresh every `interval` s until the view is closed (while this thread's owner trains)."""

        def loop():
            while not self._stop.wait(interval):
                self.refresh()

        thread = threading.Thread(target=loop, name="grid-view", daemon=True)
        thread.start()
        return thread


def status_tables(store: Store, sweep: str | None, failed_only: bool) -> list[Table]:
    """`vlbench status`: one table per sweep; Slurm's own state beside the runs that ran under it."""
    from vlbench.execution import slurm_states

    runs = store.runs(sweep=sweep, status="failed" if failed_only else None)
    slurm = slurm_states([r.slurm_job_id for r in runs if r.slurm_job_id and r.status in ("running", "interrupted")])
    tables = []
    for name in dict.fromkeys(r.sweep for r in runs):
        mine = [r for r in runs if r.sweep == name]
        if failed_only:  # what went wrong, in full: the run's name and key never wrap
            table = Table("run", "key", "finished", "error", title=f"sweep {name}: failed runs")
            table.columns[0].no_wrap = table.columns[1].no_wrap = True
            for r in mine:
                table.add_row(r.label, r.key, r.finished_at.strftime("%m-%d %H:%M") if r.finished_at else "-", r.error)
            tables.append(table)
            continue
        with_slurm = any(r.slurm_job_id for r in mine)
        columns = ["run", "state", "progress", "params %", "train s", "finished", *(["slurm job"] * with_slurm), "error / why"]
        table = Table(*columns, title=f"sweep {name}")
        table.columns[0].no_wrap = True  # a run's label is its name: never broken over lines
        table.columns[1].min_width = len("interrupted")  # nor its state cut
        for r in mine:
            state, where, eta = describe(r)
            colour = COLOURS.get(state, "dim")
            progress = (where + (f", ETA {eta}" if eta != "-" else "")) if state == "running" else where if r.stale else ""
            job = [f"{r.slurm_job_id} {slurm.get(r.slurm_job_id, '')}".strip() if r.slurm_job_id else "-"] * with_slurm
            why = f"{r.superseded_at:%m-%d %H:%M}: {r.superseded_reason}" if state == "superseded" else r.error or ""
            table.add_row(
                r.label, f"[{colour}]{state}[/{colour}]", progress,
                f"{r.percent:.2f}" if r.percent is not None else "-",
                f"{r.train_seconds:.1f}" if r.train_seconds is not None else "-",
                r.finished_at.strftime("%m-%d %H:%M") if r.finished_at else "-", *job, why,
            )  # fmt: skip
        tables.append(table)
    return tables
