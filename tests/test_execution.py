"""Execution for real: a run killed with SIGKILL or stopped with SIGINT resumes from its checkpoint to
exactly the uninterrupted result; local worker processes share the grid; DDP runs through the sweep;
the database is rebuilt from run folders; the store's bad input ends as one line."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vlbench.cli import app
from vlbench.store import Store

FAST_CLI = Path(__file__).parent / "fast_cli.py"
# 2 epochs x 4 tasks x 6 batches = 48 optimizer steps
RUN = ["--methods", "adapter", "--epochs", "2", "--n-train", "48", "--n-val", "8", "--n-test", "16", "--batch-size", "8"]


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def start_sweep(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the same threads as the in-process runs: same floats
    return subprocess.Popen(
        [sys.executable, str(FAST_CLI), "sweep", "image-text", *RUN, *args], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def checkpoint_step(workdir: Path) -> int:
    """The global step of the newest complete checkpoint of the sweep's one run, -1 when there is none."""
    for manifest in workdir.glob("runs/image-text-tiny/*/checkpoint/latest.json"):
        try:
            return int(json.loads(manifest.read_text())["snapshot"].split("-")[1])
        except (OSError, ValueError, KeyError):
            pass  # being replaced just now
    return -1


def wait_for_checkpoint(workdir: Path, process: subprocess.Popen, least_step: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = checkpoint_step(workdir)
        if step >= least_step:
            return step
        if process.poll() is not None:
            pytest.fail(f"the sweep ended before a checkpoint at step {least_step}:\n{process.stdout.read()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail("no checkpoint in time")


def adapter_run(db: Path):
    (run,) = [r for r in Store(f"sqlite:///{db}").runs() if r.method == "adapter"]
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_cache):
    """The uninterrupted run's test metrics, in a database of its own."""
    from vlbench import backbones
    from conftest import FAST_BACKBONE

    folder = tmp_path_factory.mktemp("reference")
    (folder / "runs").mkdir()
    (folder / "runs" / "cache").symlink_to(shared_cache)
    old_cwd, old_spec = os.getcwd(), backbones.BACKBONES["tiny"]
    os.chdir(folder)
    backbones.BACKBONES["tiny"] = FAST_BACKBONE
    try:
        result = invoke("sweep", "image-text", *RUN)
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(old_cwd)
        backbones.BACKBONES["tiny"] = old_spec
    return outcome(folder / "runs" / "vlbench.db")


def outcome(db: Path) -> dict:
    """What a finished run produced: its test metrics and the bytes of its trained weights."""
    run = adapter_run(db)
    scores = Store(f"sqlite:///{db}").test_scores().query("run_id == @run.id")[["task", "name", "value"]]
    weights = hashlib.sha256((Path(run.run_dir) / "trainable.safetensors").read_bytes()).hexdigest()
    return {"test": scores.values.tolist(), "weights": weights}


def test_reference_learns_something(reference):
    assert any(value > 0 for _, _, value in reference["test"])  # so that equal scores mean something


def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_result(workdir, reference):
    db = workdir / "runs" / "vlbench.db"
    process = start_sweep(workdir, "--checkpoint-every", "5")
    killed_after = wait_for_checkpoint(workdir, process, least_step=25)  # in the second epoch (steps 24-47)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = adapter_run(db)
    assert (run.status, run.state) == ("running", "stale")  # its owner is dead: the next sweep may take it
    result = invoke("sweep", "image-text", *RUN, "--checkpoint-every", "5")
    assert result.exit_code == 0, result.output
    run = adapter_run(db)
    assert run.status == "done" and len(run.resumed_from) == 1
    resumed = run.resumed_from[0]
    assert resumed["step"] >= killed_after and resumed["epoch_step"] > 0  # mid-epoch, not from zero
    assert outcome(db) == reference  # bitwise: the same weights and scores as never having been killed
    run_dir = Path(run.run_dir)
    assert not (run_dir / "checkpoint").exists() and (run_dir / "trainable.safetensors").exists()  # pruned
    print(f"\nkilled after the checkpoint at step {killed_after}; resumed from {resumed}; test {reference}")


def test_sigint_checkpoints_marks_interrupted_and_resumes(workdir, reference):
    db = workdir / "runs" / "vlbench.db"
    process = start_sweep(workdir, "--keep-checkpoints")
    wait_for_checkpoint(workdir, process, least_step=24)  # the first epoch's checkpoint
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "interrupted adapter-single-d8-s0: interrupted by SIGINT at epoch 2" in " ".join(output.split())
    assert "run the same command again to resume" in output
    run = adapter_run(db)
    assert run.status == "interrupted" and "checkpoint saved" in run.error
    result = invoke("sweep", "image-text", *RUN, "--keep-checkpoints")
    assert result.exit_code == 0, result.output
    run = adapter_run(db)
    assert run.status == "done" and run.resumed_from[0]["step"] >= 24
    assert outcome(db) == reference
    assert (Path(run.run_dir) / "checkpoint" / "latest.json").exists()  # --keep-checkpoints


def test_sigterm_reaches_every_worker_and_each_run_resumes(workdir):
    process = start_sweep(workdir, "--methods", "adapter,lora", "--workers", "2", "--checkpoint-every", "5")
    deadline = time.monotonic() + 240
    while len(list(workdir.glob("runs/image-text-tiny/*/checkpoint/latest.json"))) < 2:
        assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # as a scheduler or `kill` stops the sweep: only the parent is told
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    runs = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method != "text-only"]
    assert sorted(r.status for r in runs) == ["interrupted"] * 2, output
    assert all("interrupted by SIGTERM" in r.error for r in runs)
    result = invoke("sweep", "image-text", *RUN, "--methods", "adapter,lora", "--workers", "2")
    assert result.exit_code == 0, result.output
    runs = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method != "text-only"]
    assert sorted(r.status for r in runs) == ["done"] * 2 and all(r.resumed_from for r in runs)


def test_local_workers_share_the_grid(workdir):
    small = ["--epochs", "1", "--n-train", "16", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
    result = invoke("sweep", "image-text", "--methods", "adapter,lora,prompt", "--workers", "2", *small)
    assert result.exit_code == 0, result.output
    runs = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method != "text-only"]
    assert sorted(r.status for r in runs) == ["done"] * 3
    assert len({r.owner.split(":")[1] for r in runs}) == 2  # two worker processes trained them
    assert {r.device for r in runs} == {"cpu (1 threads)"}  # each its share of the 2 cores
    assert "adapter-single-d8-s0: running" in result.output and "lora-single-d8-s0: done" in result.output


def test_ddp_run_through_the_sweep(workdir):
    small = ["--epochs", "1", "--n-train", "16", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
    result = invoke("sweep", "image-text", "--methods", "adapter", "--nproc-per-run", "2", *small)
    assert result.exit_code == 0, result.output
    (run,) = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method == "adapter"]
    assert run.status == "done" and run.world_size == 2
    assert (Path(run.run_dir) / "trainable.safetensors").exists()


def test_export_and_rebuild_from_run_folders(workdir):
    small = ["--epochs", "1", "--n-train", "16", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
    assert invoke("sweep", "image-text", "--methods", "full,adapter", *small).exit_code == 0
    for fmt in ("json", "csv", "parquet"):
        result = invoke("db", "export", "--format", fmt)
        assert result.exit_code == 0 and "3 run(s) written" in result.output, result.output
    frame = pd.read_parquet(workdir / "reports" / "export" / "runs.parquet")
    assert len(frame) == 3 and frame["params.percent"].notna().sum() == 2 and "test.vqa.score" in frame  # text-only: none
    assert pd.read_csv(workdir / "reports" / "export" / "runs.csv")["key"].tolist() == frame["key"].tolist()
    original = json.loads((workdir / "reports" / "export" / "runs.json").read_text())

    for suffix in ("", "-wal", "-shm"):  # the database is gone; the run folders remain
        if (workdir / "runs" / f"vlbench.db{suffix}").exists():
            (workdir / "runs" / f"vlbench.db{suffix}").rename(workdir / f"lost.db{suffix}")
    result = invoke("db", "rebuild", "--from", "runs")
    assert result.exit_code == 0 and "3 run(s) imported" in result.output, result.output
    assert invoke("db", "export", "--format", "json").exit_code == 0
    by_key = lambda rows: sorted(rows, key=lambda r: r["key"])  # noqa: E731 - the row ids differ, nothing else
    assert by_key(json.loads((workdir / "reports" / "export" / "runs.json").read_text())) == by_key(original)
    rebuilt = Store(Store.default_url(workdir / "runs")).run_documents()
    lost = Store(f"sqlite:///{workdir / 'lost.db'}").run_documents()
    assert sorted(rebuilt, key=lambda d: d["run"]["key"]) == sorted(lost, key=lambda d: d["run"]["key"])
    result = invoke("db", "rebuild", "--from", "runs")
    assert "0 run(s) imported, 3 already in the database" in result.output


def one_error_line(result, *fragments):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output


def test_store_bad_input_is_one_line(workdir):
    import sqlite3

    (workdir / "reports").write_text("not a folder")
    one_error_line(invoke("sweep", "image-text", *RUN), "reports", "is not a folder")
    (workdir / "reports").unlink()
    one_error_line(invoke("report", "--table", "1"), "no database at runs/vlbench.db", "vlbench sweep image-text")
    one_error_line(invoke("status"), "no database at")
    assert not (workdir / "runs" / "vlbench.db").exists()  # reading created nothing
    one_error_line(invoke("sweep", "image-text", *RUN, "--sweep", "../../x"), "--sweep", "not a plain name")
    one_error_line(invoke("sweep", "image-text", *RUN, "--workers", "0"), "--workers: must be at least 1")
    one_error_line(invoke("sweep", "image-text", *RUN, "--backend", "k8s"), "--backend: unknown backend 'k8s'")
    one_error_line(invoke("sweep", "image-text", *RUN, "--slurm-extra", "nokey"), "--slurm-extra: expected KEY=VALUE")
    con = sqlite3.connect(workdir / "photos.db")
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.close()
    for command in (["status"], ["report"], ["sweep", "image-text", *RUN], ["db", "export"]):
        one_error_line(invoke(*command, "--db", "sqlite:///photos.db"), "another application's tables (photos)")
    one_error_line(invoke("db", "rebuild", "--from", "nowhere"), "--from: nowhere is not a folder")


def test_runs_as_a_plain_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    one_error_line(invoke("sweep", "image-text", *RUN), "runs", "is not a folder")
    one_error_line(invoke("status"), "runs", "is not a folder")


def slurm_run_state(db: Path) -> tuple:
    try:
        run = adapter_run(db)
    except (ValueError, Exception):  # noqa: BLE001 - no row yet, or the database is being created
        return None, None
    return run.status, run.slurm_job_id


def test_slurm_job_array_runs_the_grid(workdir, slurm_cluster):
    small = ["--epochs", "1", "--n-train", "16", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
    result = invoke(
        "sweep", "image-text", "--methods", "adapter,lora", *small, "--backend", "slurm", "--wait",
        "--slurm-partition", slurm_cluster.partition, "--slurm-cpus", "1", "--slurm-time", "10",
        "--slurm-extra", "comment=vlbench-test",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "submitted Slurm job array" in result.output and "2 trained" in result.output
    array = result.output.split("submitted Slurm job array ")[1].split()[0]
    runs = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method != "text-only"]
    assert sorted(r.status for r in runs) == ["done", "done"]
    assert sorted(r.slurm_job_id for r in runs) == [f"{array}_0", f"{array}_1"]
    assert {r.device for r in runs} == {"cpu (1 threads)"}  # --slurm-cpus 1
    status = invoke("status")
    assert f"{array}_0" in status.output
    print(f"\n{result.output}\n{status.output}")


def test_slurm_task_signalled_at_its_time_limit_is_requeued_and_resumes(workdir, slurm_cluster, reference):
    db = workdir / "runs" / "vlbench.db"
    result = invoke(
        "sweep", "image-text", *RUN, "--checkpoint-every", "5", "--backend", "slurm",
        "--slurm-partition", slurm_cluster.partition, "--slurm-cpus", "2", "--slurm-time", "5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    array = result.output.split("submitted Slurm job array ")[1].split()[0]
    deadline = time.monotonic() + 240
    while checkpoint_step(workdir) < 25 and time.monotonic() < deadline:  # mid-way through the second epoch
        time.sleep(0.02)
    job = adapter_run(db).slurm_job_id  # a one-task array is submitted as a plain job
    assert job.split("_")[0] == array
    # what Slurm sends before a time limit (submitit's --signal=USR2@90): submitit checkpoints and requeues
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    while time.monotonic() < deadline and slurm_run_state(db)[0] != "done":
        time.sleep(0.5)
    run = adapter_run(db)
    assert run.status == "done", (run.status, run.error)
    assert run.slurm_job_id == job and len(run.resumed_from) == 1
    assert run.resumed_from[0]["step"] >= 25  # from its checkpoint, not from zero
    assert outcome(db) == reference  # --slurm-cpus 2: the reference's threads, so the same floats
    print(f"\nrequeued Slurm job {job} resumed from {run.resumed_from[0]}")
