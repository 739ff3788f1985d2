"""The results database: sweeps, runs, metrics and parameter counts. The only module that talks SQL.

Every write is one short transaction, so a crash or an exception never leaves half a result.
A run is claimed by one process (its `owner` token); only that owner may record into it or
finish it, so a run taken over after a crash cannot be overwritten by the process that lost it.
A running run's owner writes a heartbeat; a run whose heartbeat is older than `stale_after`
seconds (or whose owner process on this host has died) is stale, and the next sweep reclaims it,
whichever host it ran on.

On SQLite (one machine) the database runs in WAL mode with a busy timeout, and write transactions
start with BEGIN IMMEDIATE, so several processes can share one file safely. PostgreSQL
(`postgresql+psycopg://...`) serves a cluster. The schema has versions (Alembic, in
vlbench/migrations): opening a database creates it or upgrades it in place, once, under a lock;
one written by a newer vlbench is refused.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import socket
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
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
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from vlbench.config import RunConfig, UserError
from vlbench.fingerprint import digest

STATUSES = ("pending", "running", "done", "failed", "interrupted", "superseded")
PROVENANCE_KEYS = ("host", "device", "git_commit", "versions", "world_size", "slurm_job_id")
COST_KEYS = (
    "train_seconds", "eval_seconds", "samples_per_second", "peak_memory_mb", "checkpoint_bytes", "peak_reserved_mb",
)  # fmt: skip
TEST_SCORE_COLUMNS = [
    "run_id", "key", "sweep", "method", "sharing", "hidden_dim", "seed", "label",
    "task", "name", "value", "trainable", "total", "percent",
]  # fmt: skip
VLBENCH_TABLES = {"sweeps", "runs", "metrics", "param_counts"}  # what a base-revision (0.1.0) database holds
CURVE_NAMES = ("loss", "lr", "samples_per_s")  # what a training-curve point holds
STALE_AFTER_S = 300.0  # a heartbeat older than this marks a running run as stale (owners beat every ~60 s)
# file systems whose locking SQLite cannot trust (its docs: "SQLite over a network")
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "ceph", "beegfs", "glusterfs",
                       "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "9p", "afs"}  # fmt: skip
MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(Exception):
    """A write the store refuses: the database is left unchanged."""


class ClaimError(StoreError):
    """The run cannot be claimed: it is done, failed (without retry), or a live process is running it."""


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
# tables (their history is vlbench/migrations; a test checks the two agree)


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
    status: Mapped[str] = mapped_column(String(20), index=True)
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
    checkpoint_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # revision 0002: execution on many workers and hosts
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progress_json: Mapped[str | None] = mapped_column(Text)  # {"epoch", "step", "total_steps", "phase"}
    run_dir: Mapped[str | None] = mapped_column(Text)  # where its checkpoint and run folder files live
    world_size: Mapped[int | None]
    slurm_job_id: Mapped[str | None] = mapped_column(String(64))
    resumed_from_json: Mapped[str | None] = mapped_column(Text)  # [{"epoch", "step", ...}] of each resume
    # revision 0003: what produced the numbers (vlbench.fingerprint), and superseded rows
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # digest of fingerprint_json
    fingerprint_json: Mapped[str | None] = mapped_column(Text)  # {part: description}
    superseded_of: Mapped[str | None] = mapped_column(String(64), index=True)  # the config key, once superseded
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    superseded_reason: Mapped[str | None] = mapped_column(Text)  # the first part that differed
    rescored_json: Mapped[str | None] = mapped_column(Text)  # [{"at", "changed"}] of each re-scoring
    # revision 0005: CUDA's peak reserved memory (the allocator's pool) beside the peak allocated
    peak_reserved_mb: Mapped[float | None]


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


class CurvePoint(Base):
    """revision 0004: a run's training curve, one row per logged step and quantity (CURVE_NAMES)."""

    __tablename__ = "curve_points"
    __table_args__ = (UniqueConstraint("run_id", "step", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int]
    epoch: Mapped[int]
    name: Mapped[str] = mapped_column(String(30))
    value: Mapped[float]


class ParamCount(Base):
    __tablename__ = "param_counts"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)  # one row per run
    trainable: Mapped[int] = mapped_column(BigInteger)  # a 7B LM's count does not fit 32 bits
    total: Mapped[int] = mapped_column(BigInteger)
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
    peak_reserved_mb: float | None
    heartbeat_at: datetime | None
    progress: dict[str, Any] | None
    run_dir: str | None
    world_size: int | None
    slurm_job_id: str | None
    resumed_from: list[dict] | None
    fingerprint: dict[str, str] | None  # what produced its numbers (vlbench.fingerprint); None before 0003
    superseded_of: str | None  # a superseded run: the config key it was a run of (its own key is renamed)
    superseded_at: datetime | None
    superseded_reason: str | None
    rescored: list[dict] | None  # each re-scoring of its test metrics after a metric change: when, what changed
    stale: bool  # running, but its owner is gone (dead on this host, or no heartbeat for stale_after s)
    # parameter counts, None until record_params
    trainable: int | None
    total: int | None
    percent: float | None
    convention: str | None
    components: dict[str, dict[str, int]] | None

    @property
    def state(self) -> str:
        """The status as a person reads it: a running run whose owner is gone is 'stale'."""
        return "stale" if self.stale else self.status


# ---------------------------------------------------------------------------------------------
# the store


def _owner_is_dead(owner: str | None) -> bool:
    """True when `owner` was a process on this host that no longer exists (a crashed run)."""
    if not owner:
        return True
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # cannot tell from here: the heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    return False


def _is_stale(run: Run, stale_after: float, now: datetime) -> bool:
    if run.status != "running":
        return False
    last_sign = run.heartbeat_at or run.started_at
    return _owner_is_dead(run.owner) or last_sign is None or (now - last_sign).total_seconds() > stale_after


def _sqlite_pragmas(writer: bool):
    def set_pragmas(dbapi_connection, connection_record) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (see _begin)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if writer:  # readers need no mode change (and must not write to a database they only read)
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, and vice versa
        cursor.execute("PRAGMA busy_timeout=60000")  # wait for another process's write instead of failing
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return set_pragmas


def _begin(conn) -> None:
    # Writes take the write lock up front: a deferred transaction that reads, then writes after
    # another process committed, fails at once with "database is locked" despite the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def filesystem_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system holding `path` (the longest mount point above it), from /proc/mounts."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    path = os.path.realpath(path)
    best, fstype = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of an existing SQLite file, read without changing it (read-only, no journal mode change)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def _alembic_config(conn) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def schema_head() -> str:
    """The newest schema version this vlbench knows."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _foreign(tables: set[str]) -> set[str]:
    """The tables of a database that is not vlbench's (some tables, but not all of the base schema's)."""
    if not tables or VLBENCH_TABLES <= tables:
        return set()
    return tables - {"alembic_version"} or tables


def _schema_state(conn, scripts: ScriptDirectory, shown: str) -> tuple[set[str], str | None]:
    """(tables, schema version) of a database, read only; another application's or a newer vlbench's
    database is refused."""
    tables = set(inspect(conn).get_table_names())
    foreign = _foreign(tables)
    if foreign:
        raise UserError(
            f"--db {shown}: the database holds another application's tables "
            f"({', '.join(sorted(foreign)[:5])}), not vlbench's; give another database"
        )
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in {rev.revision for rev in scripts.walk_revisions()}:
        raise UserError(
            f"--db {shown}: its schema is version {current}, written by a newer vlbench; this vlbench "
            f"knows versions up to {scripts.get_current_head()}: upgrade vlbench to use it"
        )
    return tables, current


class Store:
    """The results database at `url`.

    `create`: a SQLite file that does not exist yet is created (reading commands pass False: they say
    there is no database instead of creating an empty one). `writer`: the store will be written; a
    database that cannot be (read-only or immutable file, read-only role) is refused up front.
    `read_only` (the dashboard): nothing is ever written, not even the schema. Implies create=False and
    writer=False; the schema is neither created nor upgraded (a database without one, or with an older
    or newer one, is refused with a UserError saying so); SQLite files are opened in SQLite's read-only
    mode and PostgreSQL sessions are read-only transactions, so a write fails in the database itself.
    """

    def __init__(
        self, url: str, *, create: bool = True, writer: bool = True, read_only: bool = False,
        stale_after: float = STALE_AFTER_S,
    ):  # fmt: skip
        if read_only:
            create = writer = False
        self.stale_after = stale_after
        self.notices: list[str] = []  # warnings for the user (e.g. SQLite on a network file system)
        shown = url  # the URL as messages name it: without its password, once parsed
        try:
            parsed = make_url(url)
            shown = parsed.render_as_string(hide_password=True)
            self.url = shown
            # the URL other processes (workers, Slurm tasks, DDP ranks) open: a SQLite path made absolute
            self.shareable_url = url
            sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
            self.in_memory = parsed.get_backend_name() == "sqlite" and not sqlite_file
            if sqlite_file:
                self._check_sqlite_file(Path(parsed.database), shown, create)
                self.shareable_url = parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(False)
            connect_args: dict[str, Any] = {}
            if read_only and sqlite_file:  # SQLite's URI form: mode=ro (the reader may still create -wal/-shm)
                uri = Path(parsed.database).resolve().as_uri()
                parsed = parsed.set(database=uri, query={**parsed.query, "mode": "ro", "uri": "true"})
            elif read_only and parsed.get_backend_name() == "postgresql":
                connect_args["options"] = "-c default_transaction_read_only=on"
            self.engine: Engine = create_engine(parsed, connect_args=connect_args)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas(writer))
                event.listen(self.engine, "begin", _begin)
            self._writer = self.engine.execution_options(write=True)
            if read_only:
                self._check_schema(shown)
            else:
                self._prepare_schema(shown)
            if writer:
                self._check_writable()
        except (exc.SQLAlchemyError, ImportError, OSError, sqlite3.Error) as e:
            problem = getattr(e, "orig", None) or e
            detail = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
            if "readonly" in detail or "read-only" in detail:
                detail += " (the file or its folder is read-only or immutable; check permissions and `lsattr`)"
            raise UserError(f"--db {shown}: {detail}") from e

    def _check_sqlite_file(self, path: Path, shown: str, create: bool) -> None:
        if path.exists():
            if path.is_dir():
                raise UserError(f"--db {shown}: {path} is a folder, not a database file")
            foreign = _foreign(_sqlite_tables(path))  # "file is not a database" surfaces as sqlite3.Error
            if foreign:
                raise UserError(
                    f"--db {shown}: {path} holds another application's tables ({', '.join(sorted(foreign)[:5])}), "
                    "not vlbench's; it was left untouched: give another --db file"
                )
        elif not create:
            raise UserError(f"--db {shown}: no database at {path} (nothing has run there yet; start with `vlbench sweep image-text`)")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        fstype = filesystem_type(path.parent)
        if fstype in NETWORK_FILESYSTEMS:
            self.notices.append(
                f"--db {shown}: {path} is on a network file system ({fstype}); SQLite's locking is unsafe there "
                "and concurrent writers can corrupt it: use PostgreSQL (--db postgresql+psycopg://...) on a cluster"
            )

    def _prepare_schema(self, shown: str) -> None:
        """Create the schema, or bring it to this vlbench's version, in one locked transaction."""
        scripts = ScriptDirectory(str(MIGRATIONS))
        head = scripts.get_current_head()
        with self._writer.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":  # one process migrates; the others wait, then find it done
                conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
            tables, current = _schema_state(conn, scripts, shown)
            if current == head:
                return
            cfg = _alembic_config(conn)
            if current is None and tables:  # written by vlbench 0.1.0, before the schema had versions
                command.stamp(cfg, "0001")
            command.upgrade(cfg, "head")

    def _check_schema(self, shown: str) -> None:
        """Read-only: the schema must be this vlbench's as it is; nothing is created or upgraded."""
        scripts = ScriptDirectory(str(MIGRATIONS))
        head = scripts.get_current_head()
        with self.engine.connect() as conn:
            tables, current = _schema_state(conn, scripts, shown)
        if not tables:
            raise UserError(
                f"--db {shown}: the database is empty (no vlbench tables yet): nothing has run there; "
                "start with `vlbench sweep image-text`"
            )
        if current != head:
            raise UserError(
                f"--db {shown}: its schema is version {current or '0001 (vlbench 0.1.0)'}, older than this vlbench's "
                f"{head}; it was opened read-only, so it is not upgraded: any other vlbench command on it (such as "
                "`vlbench status`) upgrades it in place"
            )

    def _check_writable(self) -> None:
        with self._write() as s, s.begin():
            s.execute(text("UPDATE alembic_version SET version_num = version_num"))  # a write that changes nothing

    @staticmethod
    def default_url(runs_dir: Path) -> str:
        return f"sqlite:///{Path(runs_dir).as_posix()}/vlbench.db"

    def _write(self) -> Session:
        """A session whose transaction takes the write lock at once: use as `with self._write() as s, s.begin():`."""
        return Session(self._writer)

    def schema_version(self) -> str:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # --- writes ---------------------------------------------------------------------------

    def get_or_create_sweep(self, name: str, suite: str, profile: str, command: str) -> int:
        try:
            return self._get_or_create_sweep(name, suite, profile, command)
        except exc.IntegrityError:  # another process created it between our look and our insert
            return self._get_or_create_sweep(name, suite, profile, command)

    def _get_or_create_sweep(self, name: str, suite: str, profile: str, command: str) -> int:
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
        self,
        sweep_id: int,
        config: RunConfig,
        provenance: dict,
        *,
        steal: bool = False,
        retry_failed: bool = True,
        run_dir: str | None = None,
        fingerprint: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """Insert the run, or reset a pending/interrupted/stale (or failed, with `retry_failed`) one,
        as running and owned by this process.

        A run that is "running" is taken over only when it is stale (its owner died on this host, or
        its heartbeat is older than `stale_after`), when its owner was an earlier attempt of the same
        Slurm job (Slurm starts an attempt only after the previous one ended, on whichever node), or
        when `steal` is set.
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
                elif run.status == "failed" and not retry_failed:
                    raise ClaimError(f"run {config.label()} ({key}) failed ({run.error}); --retry-failed retries it")
                elif run.status == "running" and not (
                    steal
                    or _is_stale(run, self.stale_after, _now())
                    or (provenance.get("slurm_job_id") and run.slurm_job_id == provenance["slurm_job_id"])
                ):
                    raise ClaimError(f"run {config.label()} ({key}) is being run by {run.owner}")
                else:  # a retry or resume starts its record afresh (a resume re-records its checkpoint's history)
                    s.execute(delete(Metric).where(Metric.run_id == run.id))
                    s.execute(delete(ParamCount).where(ParamCount.run_id == run.id))
                    run.error = None
                    run.finished_at = None
                    run.progress_json = None
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
                run.started_at = run.heartbeat_at = _now()
                run.host = provenance.get("host")
                run.device = provenance.get("device")
                run.git_commit = provenance.get("git_commit")
                versions = provenance.get("versions")
                run.versions_json = json.dumps(versions, sort_keys=True) if versions is not None else None
                run.world_size = provenance.get("world_size")
                run.slurm_job_id = provenance.get("slurm_job_id")
                run.fingerprint_json = _dump(fingerprint)
                run.fingerprint = digest(fingerprint) if fingerprint is not None else None
                if run_dir is not None:
                    run.run_dir = run_dir
                run.owner = owner
                s.flush()
                return run.id, owner
        except exc.IntegrityError as e:  # e.g. another process inserted the same key first (non-SQLite backends)
            raise ClaimError(f"could not claim run {config.label()} ({key}): {e.orig}") from e

    def _owned_run(self, s: Session, run_id: int, owner: str, statuses: tuple[str, ...] = ("running",)) -> Run:
        run = s.scalar(select(Run).where(Run.id == run_id).with_for_update())
        if run is None:
            raise StoreError(f"no run with id {run_id}")
        if run.owner != owner:
            raise OwnershipError(f"run {run.label} ({run.key}) is owned by {run.owner}, not {owner}")
        if run.status not in statuses:
            raise OwnershipError(f"run {run.label} ({run.key}) is {run.status}, not running")
        return run

    def reset_failed(self, keys: list[str]) -> list[str]:
        """Put failed runs back to pending, to be trained again from scratch (--retry-failed): once,
        by whichever worker claims each first. Returns their run folders (for their checkpoints)."""
        with self._write() as s, s.begin():
            runs = list(s.scalars(select(Run).where(Run.key.in_(keys), Run.status == "failed").with_for_update()))
            for run in runs:
                run.status, run.resumed_from_json = "pending", None
            return [run.run_dir for run in runs if run.run_dir]

    def supersede(self, key: str, reason: str) -> bool:
        """Mark the done run of config `key` superseded (what produced its numbers changed): the row and
        its metrics stay, under the key `<key>~<row id>`, so the config can be run again. False if it
        is not done (another process superseded or reclaimed it first)."""
        with self._write() as s, s.begin():
            run = s.scalar(select(Run).where(Run.key == key).with_for_update())
            if run is None or run.status != "done":
                return False
            run.superseded_of, run.key = key, f"{key}~{run.id}"
            run.status = "superseded"
            run.superseded_at = _now()
            run.superseded_reason = reason
        return True

    def rescore(self, key: str, test: dict[str, dict[str, float]], fingerprint: dict[str, str], changed: str) -> None:
        """Replace the done run's test metrics with a re-scoring of its trained model under today's
        metrics (`fingerprint`), and note when and what changed; its other metrics and costs stay."""
        with self._write() as s, s.begin():
            run = s.scalar(select(Run).where(Run.key == key).with_for_update())
            if run is None or run.status != "done":
                raise StoreError(f"run {key} is not a done run; only a finished run can be re-scored")
            epoch = s.scalar(select(Metric.epoch).where(Metric.run_id == run.id, Metric.split == "test").limit(1))
            s.execute(delete(Metric).where(Metric.run_id == run.id, Metric.split == "test"))
            s.add_all(_metric_rows(run.id, "test", epoch or 0, test))
            run.fingerprint_json = _dump(fingerprint)
            run.fingerprint = digest(fingerprint)
            run.rescored_json = _dump([*(_load(run.rescored_json) or []), {"at": _now().isoformat(), "changed": changed}])

    def heartbeat(self, run_id: int, owner: str, progress: dict | None = None) -> None:
        """The owner is alive (and, optionally, where it is). OwnershipError once the run was taken over."""
        with self._write() as s, s.begin():
            run = self._owned_run(s, run_id, owner)
            run.heartbeat_at = _now()
            if progress is not None:
                run.progress_json = json.dumps(progress, sort_keys=True)

    def note_resume(self, run_id: int, owner: str, point: dict) -> None:
        """Record that the run continued from a checkpoint at `point` ({"epoch", "step", ...})."""
        with self._write() as s, s.begin():
            run = self._owned_run(s, run_id, owner)
            points = json.loads(run.resumed_from_json) if run.resumed_from_json else []
            run.resumed_from_json = json.dumps([*points, point], sort_keys=True)

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
        rows = _metric_rows(run_id, split, epoch, metrics)
        with self._write() as s, s.begin():
            self._owned_run(s, run_id, owner)
            s.add_all(rows)

    def record_curve(self, run_id: int, owner: str, points: list[dict]) -> None:
        """Training-curve points [{"step", "epoch", "loss", "lr", "samples_per_s"}]; a point at a step
        already recorded replaces it (a resumed run logs the same steps again). The owner may still
        write the last points just after the run finished."""
        rows = [
            CurvePoint(run_id=run_id, step=p["step"], epoch=p["epoch"], name=name, value=float(p[name]))
            for p in points for name in CURVE_NAMES if p.get(name) is not None and math.isfinite(p[name])
        ]  # fmt: skip
        with self._write() as s, s.begin():
            self._owned_run(s, run_id, owner, statuses=("running", "done", "interrupted"))
            s.execute(delete(CurvePoint).where(CurvePoint.run_id == run_id, CurvePoint.step.in_([p["step"] for p in points])))
            s.add_all(rows)

    def curves(self, run_ids: list[int]) -> pd.DataFrame:
        """The training-curve points of these runs: run_id, step, epoch, name, value."""
        q = select(CurvePoint.run_id, CurvePoint.step, CurvePoint.epoch, CurvePoint.name, CurvePoint.value).where(
            CurvePoint.run_id.in_(run_ids)
        ).order_by(CurvePoint.run_id, CurvePoint.name, CurvePoint.step)
        with Session(self.engine) as s:
            rows = [tuple(r) for r in s.execute(q)]
        return pd.DataFrame(rows, columns=["run_id", "step", "epoch", "name", "value"])

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
        self._end_run(run_id, owner, "failed", error)

    def interrupt_run(self, run_id: int, owner: str, reason: str) -> None:
        """Stopped on purpose (Ctrl-C, SIGTERM, preemption): not failed; the next sweep resumes it."""
        self._end_run(run_id, owner, "interrupted", reason)

    def _end_run(self, run_id: int, owner: str, status: str, error: str) -> None:
        with self._write() as s, s.begin():
            run = self._owned_run(s, run_id, owner)
            run.status = status
            run.error = error
            run.finished_at = _now()

    def import_run(self, doc: dict) -> bool:
        """Write a finished run from its run document (`run_document`), e.g. when rebuilding the database
        from run folders. False (nothing written) when a run with its key is already in the database."""
        sweep_doc, run_doc = doc["sweep"], doc["run"]
        with self._write() as s, s.begin():
            if s.scalar(select(Run.id).where(Run.key == run_doc["key"])) is not None:
                return False
            sweep = s.scalar(select(Sweep).where(Sweep.name == sweep_doc["name"]))
            if sweep is None:
                sweep = Sweep(
                    name=sweep_doc["name"], suite=sweep_doc["suite"], profile=sweep_doc["profile"],
                    created_at=_parse_time(sweep_doc["created_at"]), command=sweep_doc["command"],
                )  # fmt: skip
                s.add(sweep)
                s.flush()
            run = Run(sweep_id=sweep.id, config_json=json.dumps(run_doc["config"], sort_keys=True))
            for name in RUN_DOC_COLUMNS:  # documents written before revision 0003 lack its columns
                value = run_doc.get(name)
                setattr(run, name, _parse_time(value) if name in TIME_COLUMNS else value)
            run.versions_json = _dump(run_doc["versions"])
            run.progress_json = _dump(run_doc["progress"])
            run.resumed_from_json = _dump(run_doc["resumed_from"])
            run.fingerprint_json = _dump(run_doc.get("fingerprint_parts"))
            run.rescored_json = _dump(run_doc.get("rescored"))
            s.add(run)
            s.flush()
            params = doc.get("params")
            if params is not None:
                s.add(
                    ParamCount(
                        run_id=run.id, trainable=params["trainable"], total=params["total"], percent=params["percent"],
                        convention=params["convention"], components_json=json.dumps(params["components"], sort_keys=True),
                    )  # fmt: skip
                )
            for m in doc.get("metrics", []):
                s.add_all(_metric_rows(run.id, m["split"], m["epoch"], {m["task"]: {m["name"]: m["value"]}}))
            s.add_all(CurvePoint(run_id=run.id, **c) for c in doc.get("curves", []))
        return True

    # --- reads ----------------------------------------------------------------------------

    def runs(
        self,
        sweep: str | None = None,
        status: str | None = None,
        profile: str | None = None,
        suite: str | None = None,
        keys: list[str] | None = None,
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
        if keys is not None:
            q = q.where(Run.key.in_(keys))
        now = _now()
        with Session(self.engine) as s:
            return [_record(run, name, pc, _is_stale(run, self.stale_after, now)) for run, name, pc in s.execute(q)]

    def test_scores(
        self, sweep: str | None = None, profile: str | None = None, suite: str | None = None,
        include_superseded: bool = False,
    ) -> pd.DataFrame:
        """One row per (done run, task, metric name) on the test split, with the run's parameter counts;
        superseded runs' rows too with `include_superseded`."""
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
        q = _filter(q, sweep=sweep, status=None, profile=profile, suite=suite)
        q = q.where(Run.status.in_(("done", "superseded") if include_superseded else ("done",)))
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

    def run_documents(self, sweep: str | None = None, keys: list[str] | None = None) -> list[dict]:
        """Each run as one JSON-ready document: its sweep, every column, its parameter counts and every
        metric. What run folders keep (run.json), `db export` writes and `db rebuild` reads back."""
        q = select(Run, Sweep).join(Sweep, Run.sweep_id == Sweep.id).order_by(Run.id)
        if sweep is not None:
            q = q.where(Sweep.name == sweep)
        if keys is not None:
            q = q.where(Run.key.in_(keys))
        with Session(self.engine) as s:
            pairs = list(s.execute(q))
            ids = [run.id for run, _ in pairs]
            params = {pc.run_id: pc for pc in s.scalars(select(ParamCount).where(ParamCount.run_id.in_(ids)))}
            metrics: dict[int, list[dict]] = {}
            order = (Metric.run_id, Metric.split, Metric.epoch, Metric.task, Metric.name)
            for m in s.scalars(select(Metric).where(Metric.run_id.in_(ids)).order_by(*order)):
                metrics.setdefault(m.run_id, []).append(
                    {"split": m.split, "epoch": m.epoch, "task": m.task, "name": m.name, "value": m.value}
                )
            curves: dict[int, list[dict]] = {}
            order = (CurvePoint.run_id, CurvePoint.step, CurvePoint.name)
            for c in s.scalars(select(CurvePoint).where(CurvePoint.run_id.in_(ids)).order_by(*order)):
                curves.setdefault(c.run_id, []).append({"step": c.step, "epoch": c.epoch, "name": c.name, "value": c.value})
            return [
                _document(run, sw, params.get(run.id), metrics.get(run.id, []), curves.get(run.id, [])) for run, sw in pairs
            ]


# the run columns a run document carries as they are (times as ISO strings)
RUN_DOC_COLUMNS = (
    "key", "method", "sharing", "hidden_dim", "seed", "profile", "suite", "label", "status", "error",
    "started_at", "finished_at", "host", "device", "git_commit", "owner", *COST_KEYS,
    "heartbeat_at", "run_dir", "world_size", "slurm_job_id", "fingerprint", "superseded_of", "superseded_at",
    "superseded_reason",
)  # fmt: skip
TIME_COLUMNS = {"started_at", "finished_at", "heartbeat_at", "superseded_at"}


def _metric_rows(run_id: int, split: str, epoch: int, metrics: dict[str, dict[str, float]]) -> list[Metric]:
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    rows = []
    for task, named in metrics.items():
        for name, value in named.items():
            # bool is a Real too, and NaN would be stored as NULL by SQLite: both are bugs upstream
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"metric {task}/{name} must be a finite number, got {value!r}")
            rows.append(Metric(run_id=run_id, split=split, epoch=epoch, task=task, name=name, value=float(value)))
    return rows


def _dump(value) -> str | None:
    return json.dumps(value, sort_keys=True) if value is not None else None


def _load(value: str | None):
    return json.loads(value) if value is not None else None


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _document(run: Run, sweep: Sweep, pc: ParamCount | None, metrics: list[dict], curves: list[dict]) -> dict:
    run_doc = {name: getattr(run, name) for name in RUN_DOC_COLUMNS}
    for name in TIME_COLUMNS:
        run_doc[name] = _time(run_doc[name])
    run_doc.update(
        config=json.loads(run.config_json), versions=_load(run.versions_json), progress=_load(run.progress_json),
        resumed_from=_load(run.resumed_from_json), fingerprint_parts=_load(run.fingerprint_json),
        rescored=_load(run.rescored_json),
    )  # fmt: skip
    params = None
    if pc is not None:
        params = {"trainable": pc.trainable, "total": pc.total, "percent": pc.percent, "convention": pc.convention,
                  "components": json.loads(pc.components_json)}  # fmt: skip
    return {
        "sweep": {"name": sweep.name, "suite": sweep.suite, "profile": sweep.profile,
                  "created_at": _time(sweep.created_at), "command": sweep.command},  # fmt: skip
        "run": run_doc,
        "params": params,
        "metrics": metrics,
        "curves": curves,
    }


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


def _record(run: Run, sweep_name: str, pc: ParamCount | None, stale: bool) -> RunRecord:
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
        versions=_load(run.versions_json),
        owner=run.owner,
        **{k: getattr(run, k) for k in COST_KEYS},
        heartbeat_at=run.heartbeat_at,
        progress=_load(run.progress_json),
        run_dir=run.run_dir,
        world_size=run.world_size,
        slurm_job_id=run.slurm_job_id,
        resumed_from=_load(run.resumed_from_json),
        fingerprint=_load(run.fingerprint_json),
        superseded_of=run.superseded_of,
        superseded_at=run.superseded_at,
        superseded_reason=run.superseded_reason,
        rescored=_load(run.rescored_json),
        stale=stale,
        trainable=pc.trainable if pc else None,
        total=pc.total if pc else None,
        percent=pc.percent if pc else None,
        convention=pc.convention if pc else None,
        components=json.loads(pc.components_json) if pc else None,
    )
