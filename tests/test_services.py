"""The local test services work for real: PostgreSQL through SQLAlchemy, Slurm through submitit."""

import os
import subprocess
import sys
import time

import cloudpickle
import sqlalchemy as sa
import submitit


# Slurm jobs unpickle the submitted functions in a fresh python where this test module is not
# importable (tests/ is not on its sys.path): ship this module's functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_postgres_select_one(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1
        assert conn.execute(sa.text("select current_database()")).scalar() == "vlbench"
    engine.dispose()


def test_fresh_databases_are_isolated(postgres_db_factory, fresh_postgres_url):
    other_url = postgres_db_factory()
    assert other_url != fresh_postgres_url
    a, b = sa.create_engine(fresh_postgres_url), sa.create_engine(other_url)
    assert sa.inspect(a).get_table_names() == []
    with a.begin() as conn:
        conn.execute(sa.text("create table runs (id int primary key)"))
        conn.execute(sa.text("insert into runs values (1)"))
    assert sa.inspect(a).get_table_names() == ["runs"]
    assert sa.inspect(b).get_table_names() == []
    a.dispose()
    b.dispose()


def _square_with_env(x):
    return x * x, os.environ.get("VLBENCH_SERVICES_PROBE"), os.environ.get("SLURM_ARRAY_TASK_ID")


def test_slurm_job_array_returns_results(slurm_cluster, tmp_path, monkeypatch):
    # sbatch exports the submitting process's environment to the job (--export=ALL)
    monkeypatch.setenv("VLBENCH_SERVICES_PROBE", "from-pytest")
    ex = slurm_cluster.executor(tmp_path / "%j", slurm_array_parallelism=2)
    jobs = ex.map_array(_square_with_env, [1, 2, 3])
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one Slurm array
    results = [slurm_cluster.result(j, timeout_s=60) for j in jobs]
    assert results == [(1, "from-pytest", "0"), (4, "from-pytest", "1"), (9, "from-pytest", "2")]


class SlowCounter(submitit.helpers.Checkpointable):
    """Counts to `steps`, one step per 0.5 s; each attempt appends a line to `log`."""

    def __init__(self, log: str, steps: int):
        self.log, self.steps, self.done = log, steps, 0

    def __call__(self):
        with open(self.log, "a") as f:
            f.write(f"attempt from={self.done} restarts={os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        while self.done < self.steps:
            time.sleep(0.5)
            self.done += 1
        return self.done

    def checkpoint(self, *args, **kwargs):
        with open(self.log, "a") as f:
            f.write(f"checkpoint at={self.done}\n")
        return super().checkpoint(*args, **kwargs)  # resubmits self, with its progress


def test_checkpointable_job_requeued_on_usr2(slurm_cluster, tmp_path):
    log = tmp_path / "attempts.txt"
    ex = slurm_cluster.executor(tmp_path / "%j")
    job = ex.submit(SlowCounter(str(log), steps=12))
    deadline = time.monotonic() + 30
    while not (log.exists() and "attempt" in log.read_text()):
        assert time.monotonic() < deadline, f"job never started: {job.stderr()}"
        time.sleep(0.2)
    time.sleep(2)  # a few steps in
    # what Slurm sends before a time limit (--signal=USR2@90) or on preemption; it must go to the job
    # step (plain scancel --signal), not to the batch shell (--batch/--full would kill the job)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    assert slurm_cluster.result(job, timeout_s=60) == 12
    lines = log.read_text().splitlines()
    attempts = [line for line in lines if line.startswith("attempt")]
    assert len(attempts) == 2, lines
    assert attempts[0] == "attempt from=0 restarts=0"
    assert lines[1].startswith("checkpoint at=")
    resumed_from = int(lines[1].split("=")[1])
    assert resumed_from > 0  # the second attempt continued from the checkpointed state
    assert attempts[1] == f"attempt from={resumed_from} restarts=1"

