"""Real local services for tests: a throwaway PostgreSQL server and a one-node Slurm cluster.

Both are started by the project's own scripts (scripts/local-postgres.sh, scripts/local-slurm.sh),
which install the Debian packages with apt-get when they are missing. Load the fixtures from
tests/conftest.py with

    pytest_plugins = ["services"]

(tests/ is on sys.path because it has no __init__.py and pytest's default "prepend" import mode puts a
conftest's folder there), or import them by name: ``from services import postgres_url, ...``.

When a service cannot start, the tests that need it are skipped with the script's error, and the reason
is also printed on the terminal (and in the summary when loaded as a plugin): never a silent skip. Set
VLBENCH_REQUIRE_SERVICES=1 to turn that skip into a failure (for a CI that must exercise them).
VLBENCH_PG_URL=postgresql+psycopg://... uses an existing server (it must allow CREATE DATABASE) instead
of starting one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_SCRIPT = REPO / "scripts" / "local-postgres.sh"
SLURM_SCRIPT = REPO / "scripts" / "local-slurm.sh"
START_TIMEOUT_S = 900  # a cold start includes apt-get install

_unavailable: list[str] = []  # reasons, repeated in the terminal summary


def _run_script(script: Path, action: str, env: dict[str, str] | None = None) -> str:
    """Run `script action`; return stdout, raise RuntimeError with stderr's tail on failure."""
    try:
        proc = subprocess.run(
            ["bash", str(script), action],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            env={**os.environ, **(env or {})},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"{script.name} {action}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{script.name} {action} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def _unavailable_service(request: pytest.FixtureRequest, service: str, error: BaseException) -> None:
    """Skip (or fail, under VLBENCH_REQUIRE_SERVICES=1), printing the reason where it can be seen."""
    ci = " (CI)" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else ""
    reason = f"{service} unavailable{ci}: {error}"
    _unavailable.append(reason)
    # pytest captures fd 1/2 during fixtures: suspend capturing so the reason reaches the terminal now
    capman = request.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        sys.stderr.write(f"\n[tests/services.py] {reason}\n")
        sys.stderr.flush()
    if os.environ.get("VLBENCH_REQUIRE_SERVICES", "") not in ("", "0"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat why service tests were skipped (active when this module is loaded via pytest_plugins)."""
    if _unavailable:
        terminalreporter.section("unavailable test services")
        for reason in dict.fromkeys(_unavailable):
            terminalreporter.write_line(reason)


# --------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL server private to this pytest session (superuser `vlbench`)."""
    external = os.environ.get("VLBENCH_PG_URL")
    if external:
        yield external
        return
    _stop_orphan_postgres()
    # our own folder: concurrent sessions get independent servers; under /tmp because the server runs
    # as `postgres`, which cannot enter pytest's /tmp/pytest-of-root
    pg_dir = tempfile.mkdtemp(prefix=f"vlbench-pg-{os.getpid()}-", dir="/tmp")
    env = {"VLBENCH_PG_DIR": pg_dir}
    try:
        url = _run_script(PG_SCRIPT, "start", env).strip().splitlines()[-1]
    except (RuntimeError, IndexError) as e:
        _stop_postgres(env, pg_dir)
        _unavailable_service(request, "PostgreSQL", e)
    try:
        yield url
    finally:
        _stop_postgres(env, pg_dir)


def _stop_orphan_postgres() -> None:
    """Stop servers left by killed pytest sessions (their pid is in the folder name)."""
    for d in Path("/tmp").glob("vlbench-pg-*-*"):
        if not d.is_dir():
            continue
        try:
            os.kill(int(d.name.split("-")[2]), 0)
        except ProcessLookupError:
            _stop_postgres({"VLBENCH_PG_DIR": str(d)}, str(d))
        except (ValueError, PermissionError):
            pass


def _stop_postgres(env: dict[str, str], pg_dir: str) -> None:
    with contextlib.suppress(RuntimeError):
        _run_script(PG_SCRIPT, "stop", env)
    shutil.rmtree(pg_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pg_dir.rstrip("/") + ".lock")


@pytest.fixture
def postgres_db_factory(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Call it to get the URL of a new empty database (test_<hex>) on the session's server; each one
    is dropped when the test ends, even if connections are still open."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    created: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_postgres_url(postgres_db_factory: Callable[[], str]) -> str:
    """URL of an empty database of its own for this test (no tables from other tests)."""
    return postgres_db_factory()


# -------------------------------------------------------------------------------------------- Slurm


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """The running local cluster. `env` is what a client needs (nothing beyond the defaults: the config
    is at /etc/slurm/slurm.conf; SLURM_CONF is given for explicitness)."""

    partition: str
    node: str
    conf: str
    env: dict[str, str]
    state_dir: Path

    def executor(self, folder: str | os.PathLike, **params: Any) -> Any:
        """A submitit AutoExecutor on this cluster, 1 CPU and 5 min per job unless overridden."""
        import submitit

        max_num_timeout = params.pop("slurm_max_num_timeout", 3)
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
        defaults = {"slurm_partition": self.partition, "timeout_min": 5, "cpus_per_task": 1}
        ex.update_parameters(**{**defaults, **params})
        return ex

    def result(self, job: Any, timeout_s: float = 60) -> Any:
        """job.result() with a deadline, failing fast when the job ended without a result.

        Needed here because sacct does not work on this cluster (no accounting): submitit then sees
        a job that died without writing its result as state UNKNOWN, and job.result() waits forever.
        On timeout the job is cancelled and the test fails, with the job's logs."""
        deadline = time.monotonic() + timeout_s
        ended_at = None
        while not job.paths.result_pickle.exists():
            state = self.job_state(job.job_id)
            if state not in _SLURM_ACTIVE:
                ended_at = ended_at or time.monotonic()
            if time.monotonic() > deadline or (ended_at and time.monotonic() - ended_at > 3):
                subprocess.run(["scancel", job.job_id], check=False, capture_output=True)
                pytest.fail(
                    f"Slurm job {job.job_id} gave no result (Slurm state {state}, waited "
                    f"{timeout_s if not ended_at else 'until the job ended'})\n"
                    f"--- stdout ({job.paths.stdout}):\n{job.stdout() or ''}\n--- stderr:\n{job.stderr() or ''}"
                )
            time.sleep(0.3)
        return job.result()

    @staticmethod
    def job_state(job_id: str) -> str:
        """State from scontrol (e.g. RUNNING, PENDING, COMPLETED, TIMEOUT); GONE once Slurm has
        forgotten the job (MinJobAge=30 s after it ended)."""
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        for field in proc.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "GONE"


_SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING",
                 "CONFIGURING", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


SLURM_LOCK = Path("/tmp/vlbench-slurm-users.lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _live_users(users_dir: Path) -> list[Path]:
    alive = []
    for p in users_dir.glob("*") if users_dir.is_dir() else []:
        try:
            os.kill(int(p.name), 0)
            alive.append(p)
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:
            alive.append(p)
    return alive


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[SlurmCluster]:
    """A one-node Slurm cluster (there is one per machine: /etc/slurm/slurm.conf, ports 6817/6818).

    Concurrent pytest sessions share it: each registers its pid, and the last one out stops it. A
    cluster that was already running before (started by hand) is used and left running."""
    state_dir = Path(os.environ.get("VLBENCH_SLURM_DIR", "/tmp/vlbench-slurm"))
    users = state_dir / "pytest-users"
    me = users / str(os.getpid())
    try:
        with _locked(SLURM_LOCK):
            try:
                _run_script(SLURM_SCRIPT, "status")
                was_running = True
            except RuntimeError:
                was_running = False
            managed = (not was_running) or bool(_live_users(users)) or (state_dir / "pytest-managed").exists()
            out = _run_script(SLURM_SCRIPT, "start")
            if managed:
                users.mkdir(parents=True, exist_ok=True)
                (state_dir / "pytest-managed").touch()
                me.touch()
    except RuntimeError as e:
        _unavailable_service(request, "Slurm", e)
    info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    cluster = SlurmCluster(
        partition=info["PARTITION"],
        node=info["NODE"],
        conf=info["SLURM_CONF"],
        env={"SLURM_CONF": info["SLURM_CONF"]},
        state_dir=state_dir,
    )
    try:
        yield cluster
    finally:
        if managed:
            with _locked(SLURM_LOCK):
                me.unlink(missing_ok=True)
                if not _live_users(users):
                    with contextlib.suppress(RuntimeError):
                        _run_script(SLURM_SCRIPT, "stop")
