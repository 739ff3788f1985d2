"""End to end through the CLI: a tiny sweep lands in the database and in the Table 1 report."""

import json
import math

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from vlbench import metrics
from vlbench.cli import app
from vlbench.model import VLModel
from vlbench.store import Store

SMALL = ["--epochs", "1", "--n-train", "24", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_sweep_report_and_rerun(workdir, monkeypatch):
    result = invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL)
    assert result.exit_code == 0, result.output
    store = Store(Store.default_url(workdir / "runs"))
    runs = {r.method: r for r in store.runs()}
    assert set(runs) == {"full", "adapter", "text-only"}
    assert all(r.status == "done" for r in runs.values())
    assert runs["full"].percent == pytest.approx(100.0)
    assert 0 < runs["adapter"].percent < 100
    assert runs["adapter"].sharing == "single" and runs["adapter"].hidden_dim == 8
    assert runs["full"].git_commit is None or len(runs["full"].git_commit) >= 40
    assert runs["full"].versions["torch"] == torch.__version__.split("+")[0] or runs["full"].versions["torch"]
    for method in ("full", "adapter"):
        r = runs[method]
        assert r.train_seconds > 0 and r.samples_per_second > 0 and r.checkpoint_bytes > 0
        assert r.peak_memory_mb is not None and r.peak_memory_mb >= 0  # RSS growth over training
        assert (workdir / "runs" / "image-text-tiny" / r.key / "trainable.safetensors").exists()
        history = store.val_history(r.id)
        assert set(history["task"]) == {"vqa", "gqa", "nlvr", "caption"}
    scores = store.test_scores()
    assert len(scores[scores["name"] == "score"]) == 3 * 4

    result = invoke("report", "--table", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"Full fine-tuning", "Single Adapter", "Text-only prior (no visual input)"}
    for row in rows.values():
        values = [row[t] for t in ("vqa", "gqa", "nlvr", "caption")]
        assert all(v is not None and math.isfinite(v) for v in values)
        assert row["avg"] == pytest.approx(sum(values) / 4, abs=0.01)
    assert rows["Full fine-tuning"]["params_percent"] == 100.0
    assert (workdir / "reports" / "table1.json").exists()

    # a rerun of the same sweep trains nothing
    monkeypatch.setattr("vlbench.sweep.train", lambda *a, **k: pytest.fail("retrained a finished run"))
    result = invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL)
    assert result.exit_code == 0, result.output
    assert "2 already done" in result.output


def test_failed_run_is_recorded_and_sweep_goes_on(workdir, monkeypatch):
    real_loss = VLModel.loss

    def nan_for_adapters(self, batch):
        loss = real_loss(self, batch)
        return loss * math.nan if len(self.method_modules) else loss

    monkeypatch.setattr(VLModel, "loss", nan_for_adapters)
    result = invoke("sweep", "image-text", "--methods", "adapter,full", *SMALL)
    assert result.exit_code == 1
    assert "failed" in result.output
    runs = {r.method: r for r in Store(Store.default_url(workdir / "runs")).runs()}
    assert runs["adapter"].status == "failed" and "nan" in runs["adapter"].error.lower()
    assert runs["full"].status == "done"

    result = invoke("status", "--failed")
    assert result.exit_code == 0 and "adapter-single-d8-s0" in result.output and "full-s0" not in result.output
    assert "TrainingError" in result.output

    # the failed run waits for --retry-failed; the finished one is never retrained
    monkeypatch.setattr(VLModel, "loss", real_loss)
    result = invoke("sweep", "image-text", "--methods", "adapter,full", *SMALL)
    assert result.exit_code == 0, result.output
    assert "1 already done" in result.output and "1 failed run(s) not retried" in result.output
    result = invoke("sweep", "image-text", "--methods", "adapter,full", "--retry-failed", *SMALL)
    assert result.exit_code == 0, result.output
    assert "1 trained, 1 already done, 0 failed" in result.output
    assert {r.status for r in Store(Store.default_url(workdir / "runs")).runs()} == {"done"}


def test_dry_run_lists_jobs_with_params(workdir):
    result = invoke("sweep", "image-text", "--methods", "full,adapter", "--hidden-dims", "8,16", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "100.00" in result.output and "d16" in result.output
    assert not (workdir / "runs" / "vlbench.db").exists()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["sweep", "image-text", "--methods", "nope"], "--methods"),
        (["sweep", "image-text", "--hidden-dims", "a,b"], "--hidden-dims"),
        (["sweep", "image-text", "--sharing", "both", "--methods", "adapter"], "--sharing"),
        (["sweep", "image-text", "--db", "nosuchdb://x"], "--db"),
        (["report", "--format", "xml"], "--format"),
    ],
)
def test_user_errors_are_one_line(workdir, args, flag):
    result = invoke(*args)
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in result.output


def test_report_with_no_runs_says_what_to_run(workdir):
    result = invoke("report", "--table", "1")
    assert result.exit_code == 2
    assert "vlbench sweep image-text" in result.output


def test_rerun_on_cpu_reproduces_metrics(workdir):
    for db in ("first.db", "second.db"):
        result = invoke("sweep", "image-text", "--methods", "adapter", "--db", f"sqlite:///{db}", *SMALL)
        assert result.exit_code == 0, result.output
    first, second = (Store(f"sqlite:///{db}").test_scores() for db in ("first.db", "second.db"))
    columns = ["method", "task", "name", "value"]
    assert first[columns].sort_values(columns).values.tolist() == second[columns].sort_values(columns).values.tolist()


def test_run_claimed_by_another_sweep_is_skipped(workdir, monkeypatch):
    from vlbench.store import ClaimError

    real_claim = Store.claim_run

    def busy_adapter(self, sweep_id, cfg, provenance, **kw):
        if cfg.method == "adapter":  # another live sweep claimed it between our plan and our claim
            real_claim(self, sweep_id, cfg, {**provenance, "host": "another-host"}, **kw)
            raise ClaimError(f"run {cfg.label()} is being run by another-host:1:x")
        return real_claim(self, sweep_id, cfg, provenance, **kw)

    monkeypatch.setattr(Store, "claim_run", busy_adapter)
    result = invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL)
    assert result.exit_code == 0, result.output
    assert "being run by another-host" in result.output and "1 trained" in result.output
    assert "0 failed" in result.output  # left to its live owner, not a failure of this sweep


def test_no_heartbeat_lands_after_a_run_is_finished(workdir, monkeypatch):
    """A heartbeat after finish_run would find the run done, take it for reclaimed by another process,
    and stop the process's next run (the sweep ended in RunTakenOver): the monitor stops first."""
    import time

    from vlbench import execution

    monkeypatch.setattr(execution, "PROGRESS_S", 0.02)
    monkeypatch.setattr(execution, "HEARTBEAT_S", 0.01)  # a heartbeat at every chance
    real_finish = Store.finish_run

    def slow_finish(self, *args, **kwargs):
        real_finish(self, *args, **kwargs)
        time.sleep(0.3)  # the run is done in the store; heartbeats would fall due meanwhile

    monkeypatch.setattr(Store, "finish_run", slow_finish)
    result = invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL)
    assert result.exit_code == 0, result.output
    assert "2 trained" in result.output and "0 failed" in result.output


def test_a_data_file_gone_bad_mid_run_fails_that_run_only(workdir, monkeypatch):
    from vlbench.data import TaskData

    real_inputs, calls = TaskData.inputs, []

    def truncated_on_fifth_batch(self, examples, device):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("features/shard-00003.safetensors: unexpected end of file")
        return real_inputs(self, examples, device)

    monkeypatch.setattr(TaskData, "inputs", truncated_on_fifth_batch)
    result = invoke("sweep", "image-text", "--methods", "adapter,full", *SMALL)
    assert result.exit_code == 1
    runs = {r.method: r for r in Store(Store.default_url(workdir / "runs")).runs()}
    assert runs["adapter"].status == "failed" and "OSError" in runs["adapter"].error
    assert "shard-00003" in runs["adapter"].error and runs["full"].status == "done"


def test_bf16_precision_trains_and_is_part_of_the_config(workdir):
    from vlbench.grid import GridRequest, expand

    (fp32,) = expand(GridRequest(methods=("adapter",)))
    (bf16,) = expand(GridRequest(methods=("adapter",), precision="bf16"))
    assert fp32.optim.precision == "fp32" and bf16.optim.precision == "bf16"
    assert bf16.key() != fp32.key()  # fp32 stays out of the key: test_bad_input pins a key from before the flag
    result = invoke("sweep", "image-text", "--methods", "adapter", "--precision", "bf16", *SMALL)
    assert result.exit_code == 0, result.output
    (run,) = [r for r in Store(Store.default_url(workdir / "runs")).runs() if r.method == "adapter"]
    assert run.status == "done" and run.config["optim"]["precision"] == "bf16"
    result = invoke("sweep", "image-text", "--dry-run", "--precision", "fp16")
    assert result.exit_code == 2 and "--precision: unknown precision 'fp16'" in result.output


def test_a_changed_method_supersedes_its_runs(workdir, monkeypatch):
    assert invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL).exit_code == 0
    store = Store(Store.default_url(workdir / "runs"))
    (old,) = [r for r in store.runs() if r.method == "adapter"]
    assert old.fingerprint["method"] == "adapter v1" and old.fingerprint["engine"].startswith("v")

    monkeypatch.setattr("vlbench.methods.adapter.Adapter.version", 2)  # as a change to the adapter's code would
    result = invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # as one line: the console wraps
    assert "superseded adapter-single-d8-s0 (what produced it changed: method: adapter v1 -> adapter v2)" in output
    assert "1 already done" in output and "1 superseded" in output
    rows = [r for r in store.runs() if r.method == "adapter"]
    superseded, current = sorted(rows, key=lambda r: r.status != "superseded")
    assert superseded.id == old.id and superseded.status == "superseded" and superseded.superseded_of == old.key
    assert superseded.key == f"{old.key}~{old.id}" and superseded.superseded_reason == "method: adapter v1 -> adapter v2"
    assert current.key == old.key and current.status == "done" and current.fingerprint["method"] == "adapter v2"
    assert current.run_dir != superseded.run_dir  # the old run's folder is kept as it was
    assert (workdir / "runs" / "image-text-tiny" / old.key / "trainable.safetensors").exists()
    # the old numbers stay in the store, out of reports unless asked for
    scores = store.test_scores(include_superseded=True)
    assert set(scores["run_id"]) >= {superseded.id, current.id} and superseded.id not in set(store.test_scores()["run_id"])
    table = {row["method"] for row in json.loads(invoke("report", "--format", "json").stdout)}
    assert "Single Adapter" in table and not any("superseded" in m for m in table)
    result = invoke("report", "--format", "json", "--include-superseded")
    assert f"Single Adapter (superseded {superseded.superseded_at:%m-%d %H:%M})" in {
        row["method"] for row in json.loads(result.stdout)
    }
    monkeypatch.setattr("vlbench.cli.console", Console(width=250))  # a wide terminal: no wrapped cells
    status = invoke("status").output
    assert "superseded" in status and "method: adapter v1 -> adapter v2" in status

    monkeypatch.setattr("vlbench.sweep.train", lambda *a, **k: pytest.fail("retrained a current run"))
    assert "2 already done" in invoke("sweep", "image-text", "--methods", "full,adapter", *SMALL).output


def test_rescore_after_a_metric_change_scores_again_without_training(workdir, monkeypatch):
    assert invoke("sweep", "image-text", "--methods", "adapter", *SMALL).exit_code == 0
    store = Store(Store.default_url(workdir / "runs"))
    (run,) = [r for r in store.runs() if r.method == "adapter"]
    stored = store.test_scores()
    nlvr_before = stored[(stored.run_id == run.id) & (stored.task == "nlvr")]["value"].tolist()

    # a fix to NLVR2's metric: bump its version, and change what it computes
    monkeypatch.setitem(metrics.VERSIONS, "accuracy", 2)
    monkeypatch.setattr("vlbench.tasks.nlvr.accuracy", lambda predictions, labels: 0.25)
    monkeypatch.setattr("vlbench.sweep.train", lambda *a, **k: pytest.fail("re-scoring must not train"))
    result = invoke("sweep", "image-text", "--methods", "adapter", *SMALL, "--rescore")
    assert result.exit_code == 0, result.output
    assert "re-scored adapter-single-d8-s0 (metric accuracy: v1 -> v2)" in " ".join(result.output.split())
    (after,) = [r for r in store.runs() if r.method == "adapter"]
    assert after.id == run.id and after.status == "done" and after.fingerprint["metric accuracy"] == "v2"
    assert [e["changed"] for e in after.rescored] == ["metric accuracy: v1 -> v2"]
    scores = store.test_scores()
    mine = scores[scores.run_id == run.id]
    assert mine[mine.task == "nlvr"]["value"].tolist() == [0.25] and nlvr_before != [0.25]
    unchanged = stored[(stored.run_id == run.id) & (stored.task != "nlvr")].reset_index(drop=True)
    assert mine[mine.task != "nlvr"].reset_index(drop=True).equals(unchanged)  # the other tasks as they were
    assert "1 already done" in invoke("sweep", "image-text", "--methods", "adapter", *SMALL).output


def test_runs_record_training_curves(workdir):
    result = invoke("sweep", "image-text", "--methods", "adapter", *SMALL, "--log-every", "5", "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    store = Store(Store.default_url(workdir / "runs"))
    run, other_seed = [r for r in store.runs() if r.method == "adapter"]
    curves = store.curves([run.id])
    by_name = {name: g for name, g in curves.groupby("name")}
    assert set(by_name) == {"loss", "lr", "samples_per_s"}
    logged = by_name["loss"]["step"].tolist()
    # the run has 24 optimizer steps: a point every 5th and at the last
    assert logged == [5, 10, 15, 20, 24]
    assert (by_name["loss"]["value"] > 0).all() and (by_name["samples_per_s"]["value"] > 0).all()
    lr = by_name["lr"]["value"]
    assert lr.max() > 0 and lr.iloc[-1] < lr.max()  # the schedule decays towards its end
    (doc,) = store.run_documents(keys=[run.key])
    assert len(doc["curves"]) == len(curves)  # run.json carries them: db rebuild restores them

    from vlbench.plot import curves_data

    (curve,) = curves_data(store, "loss")  # the two seeds of one config: one curve, their range as a band
    assert curve.label == "Single Adapter" and curve.seeds == 2 and curve.xs == [5, 10, 15, 20, 24]
    assert all(lo <= m <= hi for lo, m, hi in zip(curve.low, curve.mean, curve.high)) and curve.low != curve.high
    (val,) = curves_data(store, "vqa")
    assert val.xs == [1.0]  # one epoch of validation
    for metric in ("loss", "vqa"):
        assert invoke("plot", "curves", "--metric", metric).exit_code == 0
        assert (workdir / "reports" / f"curves_{metric}.png").stat().st_size > 1000
    result = invoke("plot", "curves", "--metric", "accuracy")
    assert result.exit_code != 0 and "--metric: unknown metric 'accuracy'" in result.output
