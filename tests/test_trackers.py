"""Trackers (issue 15): `sweep --log-to mlflow,tensorboard` and `db export --format mlflow|tensorboard`,
offline against the real libraries (MLflow on a local SQLite store, TensorBoard event files)."""

import sys

import pytest
from typer.testing import CliRunner

from vlbench.cli import app
from vlbench.store import Store
from vlbench.trackers import MlflowTracker, default_mlflow_uri, flat_config

SMALL = ["--epochs", "1", "--n-train", "24", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
STEPS = [5, 10, 15, 20, 24]  # the curve points of a SMALL run at --log-every 5 (24 optimizer steps)


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # tests never touch the network


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def error_line(result) -> str:
    """The command's whole output, which must be one line."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def sweep(*extra):
    return invoke("sweep", "image-text", "--methods", "adapter", *SMALL, "--log-every", "5", *extra)


def test_sweep_logs_each_run_to_mlflow_and_tensorboard(workdir):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{workdir}/tracking/mlflow.db"
    result = sweep("--log-to", "mlflow,tensorboard", "--mlflow-uri", uri)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    store = Store(Store.default_url(workdir / "runs"))
    docs = {d["run"]["method"]: d for d in store.run_documents()}
    assert set(docs) == {"adapter", "text-only"}  # the baseline is logged too: the reference every method must beat
    doc = docs["adapter"]
    run = doc["run"]

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("image-text-tiny")  # one experiment per sweep
    logged = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(logged) == {run["label"], docs["text-only"]["run"]["label"]}
    mlrun = logged[run["label"]]
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["key"] == run["key"] and mlrun.data.tags["sweep"] == "image-text-tiny"
    assert mlrun.data.tags["fingerprint"] == run["fingerprint"] and mlrun.data.tags["status"] == "done"
    assert mlrun.data.tags.get("mlflow.source.git.commit") == run["git_commit"]
    params = mlrun.data.params
    assert params["method"] == "adapter" and params["hidden_dim"] == "8" and params["sharing"] == "single"
    assert params["optim.lr"] == str(run["config"]["optim"]["lr"]) and params["data.n_train"] == "24"
    assert len(params) == len(flat_config(run["config"]))
    loss = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert [m.step for m in loss] == STEPS
    assert [m.value for m in loss] == [c["value"] for c in doc["curves"] if c["name"] == "loss"]
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "val/vqa/score")] == [0]
    scores = store.test_scores()
    mine = scores[scores.key == run["key"]]
    assert len(mine) >= 4
    for row in mine.itertuples():
        assert mlrun.data.metrics[f"test/{row.task}/{row.name}"] == row.value
    assert mlrun.data.metrics["param_counts/trainable"] == doc["params"]["trainable"]
    assert mlrun.data.metrics["param_counts/method/trainable"] == doc["params"]["components"]["method"]["trainable"]
    assert mlrun.data.metrics["cost/checkpoint_bytes"] == run["checkpoint_bytes"]
    artifacts = {a.path: a.file_size for a in client.list_artifacts(mlrun.info.run_id)}
    assert artifacts["trainable.safetensors"] == run["checkpoint_bytes"]
    assert {"config.json", "metrics.json", "run.json"} <= set(artifacts)
    # artifacts beside the SQLite store, not under whatever folder the process ran in
    assert mlrun.info.artifact_uri.startswith((workdir / "tracking" / "artifacts").as_uri())

    events = EventAccumulator(str(workdir / "runs" / "image-text-tiny" / run["key"] / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == STEPS
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([m.value for m in loss])
    for row in mine.itertuples():
        assert events.Scalars(f"test/{row.task}/{row.name}")[0].value == pytest.approx(row.value)
    assert events.Scalars("param_counts/trainable")[0].value == doc["params"]["trainable"]
    assert "config/text_summary" in events.Tags()["tensors"]

    # runs logged already are not logged twice; TensorBoard's event files are written afresh
    result = invoke("db", "export", "--format", "mlflow", "--mlflow-uri", uri)
    assert result.exit_code == 0 and "0 run(s) logged to mlflow, 2 already there" in result.output, result.output
    assert len(client.search_runs([experiment.experiment_id])) == 2
    result = invoke("db", "export", "--format", "tensorboard")
    assert result.exit_code == 0 and "2 run(s) logged to tensorboard" in result.output, result.output
    events = EventAccumulator(str(workdir / "runs" / "image-text-tiny" / run["key"] / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == STEPS  # one generation, not two


def test_a_tracker_failure_leaves_the_run_done(workdir, monkeypatch):
    def broken(self, doc):
        raise ConnectionError("tracking server went away")

    with monkeypatch.context() as patched:
        patched.setattr(MlflowTracker, "log_run", broken)
        result = sweep("--log-to", "mlflow")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "--log-to mlflow" in line]
    assert len(warnings) == 2  # the adapter run and the baseline, a line each
    assert "adapter-single-d8-s0" in result.output and "tracking server went away" in result.output
    store = Store(Store.default_url(workdir / "runs"))
    assert {r.status for r in store.runs()} == {"done"}
    assert "1 trained" in result.output

    # what was not logged is logged later, to the default store: mlruns/ next to runs/
    result = invoke("db", "export", "--format", "mlflow")
    assert result.exit_code == 0 and "2 run(s) logged to mlflow" in result.output, result.output
    from mlflow import MlflowClient

    assert default_mlflow_uri(workdir / "runs") == f"sqlite:///{workdir}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=default_mlflow_uri(workdir / "runs"))
    experiment = client.get_experiment_by_name("image-text-tiny")
    assert len(client.search_runs([experiment.experiment_id])) == 2


@pytest.mark.parametrize("tracker, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_library_is_one_line_before_anything_trains(workdir, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    result = sweep("--log-to", tracker)
    assert result.exit_code == 2
    assert error_line(result) == f"error: --log-to {tracker}: {module} is not installed: pip install 'vlbench[trackers]'"
    assert Store(Store.default_url(workdir / "runs")).runs() == []


def test_bad_tracker_flags_are_one_line(workdir):
    (workdir / "a-file").write_text("not a folder")
    result = sweep("--log-to", "mlflow", "--mlflow-uri", f"sqlite:///{workdir}/a-file/mlflow.db")
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: --mlflow-uri sqlite:///{workdir}/a-file/mlflow.db: ")
    assert Store(Store.default_url(workdir / "runs")).runs() == []
    result = sweep("--log-to", "wandb")
    assert result.exit_code == 2
    assert error_line(result) == "error: --log-to: unknown tracker 'wandb' (choose from mlflow, tensorboard)"
    result = sweep("--mlflow-uri", "sqlite:///x.db")
    assert result.exit_code == 2 and error_line(result) == "error: --mlflow-uri goes with --log-to mlflow"
    result = invoke("db", "export", "--format", "tensorboard", "--out", "x.csv")
    assert result.exit_code == 2
    assert error_line(result) == "error: --out: --format tensorboard logs to the run folders, not to a file"


def test_the_command_line_imports_no_tracker_library():
    import subprocess

    code = "import sys, vlbench.cli, vlbench.sweep; print(sorted({'mlflow', 'tensorboard'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
