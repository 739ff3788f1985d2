"""The results database: sweeps, runs, metrics and parameter counts. The only module that talks SQL.

Every write is one short transaction, so a crash or an exception never leaves half a result.
A run is claimed by one process (its `owner` token); only that owner may record into it or
finish it, so a run taken over after a crash cannot be overwritten by the process that lost it.

On SQLite (the default) the database runs in WAL mode with a busy timeout, and write
transactions start with BEGIN IMMEDIATE, so several processes can share one file safely.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    exc,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from vlbench.config import RunConfig, UserError

STATUSES = ("pending", "running", "done", "failed")
PROVENANCE_KEYS = ("host", "device", "git_commit", "versions")
COST_KEYS = ("train_seconds", "eval_seconds", "samples_per_second", "peak_memory_mb", "checkpoint_bytes")
TEST_SCORE_COLUMNS = [
    "run_id", "key", "sweep", "method", "sharing", "hidden_dim", "seed", "label",
    "task", "name", "value", "trainable", "total", "percent",
]  # fmt: skip


class StoreError(Exception):
    """A write the store refuses: the database is left unchanged."""


class ClaimError(StoreError):
    """The run cannot be claimed: it is done, or a live process is running it."""


class OwnershipError(StoreError):
    """A write to a run by a process that does not (or no longer) own it."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Stores UTC, returns timezone-aware UTC datetimes (SQLite would otherwise drop the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


# ---------------------------------------------------------------------------------------------
# tables


class Base(DeclarativeBase):
    pass


class Sweep(Base):
    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    suite: Mapped[str] = mapped_column(String(50))
    profile: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    command: Mapped[str] = mapped_column(Text)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"), index=True)  # the sweep that last claimed it
    method: Mapped[str] = mapped_column(String(50))
    sharing: Mapped[str | None] = mapped_column(String(20))
    hidden_dim: Mapped[int | None]
    seed: Mapped[int]
    profile: Mapped[str] = mapped_column(String(50))
    suite: Mapped[str] = mapped_column(String(50))
    label: Mapped[str] = mapped_column(String(200))
    config_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    host: Mapped[str | None] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(200))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    versions_json: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(300))
    train_seconds: Mapped[float | None]
    eval_seconds: Mapped[float | None]
    samples_per_second: Mapped[float | None]
    peak_memory_mb: Mapped[float | None]
    checkpoint_bytes: Mapped[int | None]


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "split", "epoch", "task", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    split: Mapped[str] = mapped_column(String(10))
    epoch: Mapped[int]
    task: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[float]


class ParamCount(Base):
    __tablename__ = "param_counts"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)  # one row per run
    trainable: Mapped[int]
    total: Mapped[int]
    percent: Mapped[float]
    convention: Mapped[str] = mapped_column(Text)
    components_json: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class RunRecord:
    """One run as read back: its columns, its sweep's name, its config and its parameter counts."""

    id: int
    key: str
    sweep_id: int
    sweep: str
    method: str
    sharing: str | None
    hidden_dim: int | None
    seed: int
    profile: str
    suite: str
    label: str
    config: dict[str, Any]
    status: str
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    host: str | None
    device: str | None
    git_commit: str | None
    versions: dict[str, str] | None
    owner: str | None
    train_seconds: float | None
    eval_seconds: float | None
    samples_per_second: float | None
    peak_memory_mb: float | None
    checkpoint_bytes: int | None
    # parameter counts, None until record_params
    trainable: int | None
    total: int | None
    percent: float | None
    convention: str | None
    components: dict[str, dict[str, int]] | None


# ---------------------------------------------------------------------------------------------
# the store


def _owner_is_dead(owner: str | None) -> bool:
    """True when `owner` was a process on this host that no longer exists (a crashed run)."""
    if not owner:
        return True
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # cannot tell from here; the caller must pass steal=True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    return False


def _set_sqlite_pragmas(dbapi_connection, connection_record) -> None:
    # Let SQLAlchemy, not the driver, issue BEGIN (see _begin); PRAGMA journal_mode needs no open transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, and vice versa
    cursor.execute("PRAGMA busy_timeout=30000")  # wait for another process's write instead of failing
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(conn) -> None:
    # Writes take the write lock up front: a deferred transaction that reads, then writes after
    # another process committed, fails at once with "database is locked" despite the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


class Store:
    def __init__(self, url: str):
        shown = url  # the URL as messages name it: without its password, once parsed
        try:
            parsed = make_url(url)
            shown = parsed.render_as_string(hide_password=True)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(parsed)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _set_sqlite_pragmas)
                event.listen(self.engine, "begin", _begin)
            Base.metadata.create_all(self.engine)  # also the connection test
        except (exc.SQLAlchemyError, ImportError, OSError) as e:
            problem = getattr(e, "orig", None) or e
            detail = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
            raise UserError(f"--db {shown}: {detail}") from e
        self._writer = self.engine.execution_options(write=True)

    @staticmethod
    def default_url(runs_dir: Path) -> str:
        return f"sqlite:///{Path(runs_dir).as_posix()}/vlbench.db"

    def _write(self) -> Session:
        """A session whose transaction takes the write lock at once: use as `with self._write() as s, s.begin():`."""
        return Session(self._writer)

    # --- writes ---------------------------------------------------------------------------

    def get_or_create_sweep(self, name: str, suite: str, profile: str, command: str) -> int:
        with self._write() as s, s.begin():
            sweep = s.scalar(select(Sweep).where(Sweep.name == name))
            if sweep is None:
                sweep = Sweep(name=name, suite=suite, profile=profile, created_at=_now(), command=command)
                s.add(sweep)
                s.flush()
            elif (sweep.suite, sweep.profile) != (suite, profile):
                raise UserError(
                    f"sweep {name!r} already exists with suite={sweep.suite}, profile={sweep.profile}; "
                    f"pick another --sweep name for suite={suite}, profile={profile}"
                )
            return sweep.id

    def claim_run(
        self, sweep_id: int, config: RunConfig, provenance: dict, *, steal: bool = False
    ) -> tuple[int, str]:
        """Insert the run, or reset a failed/pending/stale one, as running and owned by this process.

        A run that is "running" is taken over only when its owner was a process on this host that
        has died, or when `steal` is set (e.g. the owner crashed on another host).
        Returns (run_id, owner); pass the owner to every later write.
        """
        unknown = set(provenance) - set(PROVENANCE_KEYS)
        if unknown:
            raise ValueError(f"unknown provenance keys {sorted(unknown)}; expected {list(PROVENANCE_KEYS)}")
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        key = config.key()
        try:
            with self._write() as s, s.begin():
                run = s.scalar(select(Run).where(Run.key == key).with_for_update())
                if run is None:
                    run = Run(key=key)
                    s.add(run)
                elif run.status == "done":
                    raise ClaimError(f"run {config.label()} ({key}) is done; it is not run again")
                elif run.status == "running" and not (steal or _owner_is_dead(run.owner)):
                    raise ClaimError(f"run {config.label()} ({key}) is being run by {run.owner}")
                else:  # a retry starts from nothing: no old metrics, params, error or costs
                    s.execute(delete(Metric).where(Metric.run_id == run.id))
                    s.execute(delete(ParamCount).where(ParamCount.run_id == run.id))
                    run.error = None
                    run.finished_at = None
                    for k in COST_KEYS:
                        setattr(run, k, None)
                run.sweep_id = sweep_id
                run.method = config.method
                run.sharing = config.sharing
                run.hidden_dim = config.hidden_dim
                run.seed = config.seed
                run.profile = config.profile
                run.suite = config.suite
                run.label = config.label()
                run.config_json = json.dumps(config.to_dict(), sort_keys=True)
                run.status = "running"
                run.started_at = _now()
                run.host = provenance.get("host")
                run.device = provenance.get("device")
                run.git_commit = provenance.get("git_commit")
                versions = provenance.get("versions")
                run.versions_json = json.dumps(versions, sort_keys=True) if versions is not None else None
                run.owner = owner
                s.flush()
                return run.id, owner
        except exc.IntegrityError as e:  # e.g. another process inserted the same key first (non-SQLite backends)
            raise ClaimError(f"could not claim run {config.label()} ({key}): {e.orig}") from e

    def _owned_run(self, s: Session, run_id: int, owner: str) -> Run:
        run = s.scalar(select(Run).where(Run.id == run_id).with_for_update())
        if run is None:
            raise StoreError(f"no run with id {run_id}")
        if run.owner != owner:
            raise OwnershipError(f"run {run.label} ({run.key}) is owned by {run.owner}, not {owner}")
        if run.status != "running":
            raise OwnershipError(f"run {run.label} ({run.key}) is {run.status}, not running")
        return run

    def record_params(
        self, run_id: int, owner: str, trainable: int, total: int, convention: str, components: dict
    ) -> None:
        if total <= 0 or not 0 <= trainable <= total:
            raise ValueError(f"bad parameter counts: trainable={trainable}, total={total}")
        with self._write() as s, s.begin():
            self._owned_run(s, run_id, owner)
            s.add(
                ParamCount(
                    run_id=run_id,
                    trainable=int(trainable),
                    total=int(total),
                    percent=100.0 * trainable / total,
                    convention=convention,
                    components_json=json.dumps(components, sort_keys=True),
                )
            )

    def record_metrics(
        self, run_id: int, owner: str, split: str, epoch: int, metrics: dict[str, dict[str, float]]
    ) -> None:
        """Record {task: {name: value}} for one split and epoch, all or nothing."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        rows = []
        for task, named in metrics.items():
            for name, value in named.items():
                # bool is a Real too, and NaN would be stored as NULL by SQLite: both are bugs upstream
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ValueError(f"metric {task}/{name} must be a finite number, got {value!r}")
                rows.append(Metric(run_id=run_id, split=split, epoch=epoch, task=task, name=name, value=float(value)))
        with self._write() as s, s.begin():
            self._owned_run(s, run_id, owner)
            s.add_all(rows)

    def finish_run(self, run_id: int, owner: str, cost: dict) -> None:
        """Mark the run done, with its costs (keys from COST_KEYS; missing ones stay empty)."""
        unknown = set(cost) - set(COST_KEYS)
        if unknown:
            raise ValueError(f"unknown cost keys {sorted(unknown)}; expected {list(COST_KEYS)}")
        with self._write() as s, s.begin():
            run = self._owned_run(s, run_id, owner)
            for k, v in cost.items():
                setattr(run, k, v)
            run.status = "done"
            run.finished_at = _now()

    def fail_run(self, run_id: int, owner: str, error: str) -> None:
        with self._write() as s, s.begin():
            run = self._owned_run(s, run_id, owner)
            run.status = "failed"
            run.error = error
            run.finished_at = _now()

    # --- reads ----------------------------------------------------------------------------

    def status_of(self, key: str) -> str | None:
        with Session(self.engine) as s:
            return s.scalar(select(Run.status).where(Run.key == key))

    def runs(
        self,
        sweep: str | None = None,
        status: str | None = None,
        profile: str | None = None,
        suite: str | None = None,
    ) -> list[RunRecord]:
        if status is not None and status not in STATUSES:
            raise UserError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        q = (
            select(Run, Sweep.name, ParamCount)
            .join(Sweep, Run.sweep_id == Sweep.id)
            .outerjoin(ParamCount, ParamCount.run_id == Run.id)
            .order_by(Run.id)
        )
        q = _filter(q, sweep=sweep, status=status, profile=profile, suite=suite)
        with Session(self.engine) as s:
            return [_record(run, sweep_name, pc) for run, sweep_name, pc in s.execute(q)]

    def test_scores(
        self, sweep: str | None = None, profile: str | None = None, suite: str | None = None
    ) -> pd.DataFrame:
        """One row per (done run, task, metric name) on the test split, with the run's parameter counts."""
        q = (
            select(
                Run.id, Run.key, Sweep.name, Run.method, Run.sharing, Run.hidden_dim, Run.seed, Run.label,
                Metric.task, Metric.name, Metric.value,
                ParamCount.trainable, ParamCount.total, ParamCount.percent,
            )  # fmt: skip
            .join(Sweep, Run.sweep_id == Sweep.id)
            .join(Metric, Metric.run_id == Run.id)
            .outerjoin(ParamCount, ParamCount.run_id == Run.id)
            .where(Metric.split == "test")
            .order_by(Run.id, Metric.task, Metric.name)
        )
        q = _filter(q, sweep=sweep, status="done", profile=profile, suite=suite)
        with Session(self.engine) as s:
            rows = [tuple(r) for r in s.execute(q)]
        return pd.DataFrame(rows, columns=TEST_SCORE_COLUMNS)

    def val_history(self, run_id: int) -> pd.DataFrame:
        q = (
            select(Metric.epoch, Metric.task, Metric.name, Metric.value)
            .where(Metric.run_id == run_id, Metric.split == "val")
            .order_by(Metric.epoch, Metric.task, Metric.name)
        )
        with Session(self.engine) as s:
            rows = [tuple(r) for r in s.execute(q)]
        return pd.DataFrame(rows, columns=["epoch", "task", "name", "value"])


def _filter(q, sweep, status, profile, suite):
    if sweep is not None:
        q = q.where(Sweep.name == sweep)
    if status is not None:
        q = q.where(Run.status == status)
    if profile is not None:
        q = q.where(Run.profile == profile)
    if suite is not None:
        q = q.where(Run.suite == suite)
    return q


def _record(run: Run, sweep_name: str, pc: ParamCount | None) -> RunRecord:
    return RunRecord(
        id=run.id,
        key=run.key,
        sweep_id=run.sweep_id,
        sweep=sweep_name,
        method=run.method,
        sharing=run.sharing,
        hidden_dim=run.hidden_dim,
        seed=run.seed,
        profile=run.profile,
        suite=run.suite,
        label=run.label,
        config=json.loads(run.config_json),
        status=run.status,
        error=run.error,
        started_at=run.started_at,
        finished_at=run.finished_at,
        host=run.host,
        device=run.device,
        git_commit=run.git_commit,
        versions=json.loads(run.versions_json) if run.versions_json is not None else None,
        owner=run.owner,
        **{k: getattr(run, k) for k in COST_KEYS},
        trainable=pc.trainable if pc else None,
        total=pc.total if pc else None,
        percent=pc.percent if pc else None,
        convention=pc.convention if pc else None,
        components=json.loads(pc.components_json) if pc else None,
    )
