"""`vlbench evaluate RUN`: a trained run loads back from its folder and reproduces its stored scores."""

import csv
import json
import shutil

import pytest
import torch
from conftest import FAST_BACKBONE
from safetensors.torch import load_file, save_file
from test_sweep import SMALL, invoke

from vlbench import runs as run_loading
from vlbench import sweep as sweeps
from vlbench.config import RunConfig
from vlbench.metrics import caption_scores, vqa_accuracy
from vlbench.store import Store
from vlbench.tasks import build_suite

LABEL = "adapter-single-d8-s0"
TASKS = ("vqa", "gqa", "nlvr", "caption")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_cache):
    """One tiny adapter sweep for the whole module (the `workdir` setup, kept for every test here),
    with the trained model's full state as training left it."""
    from vlbench import backbones

    folder = tmp_path_factory.mktemp("evaluate")
    states = {}
    write_run_folder = sweeps.write_run_folder

    def keep_state(run_dir, cfg, test, model):
        states[cfg.key()] = {n: t.detach().clone() for n, t in model.state_dict().items()}
        write_run_folder(run_dir, cfg, test, model)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.BACKBONES, "tiny", FAST_BACKBONE)
        mp.delenv("VLBENCH_DATA_ROOT", raising=False)
        mp.chdir(folder)
        (folder / "runs").mkdir()
        (folder / "runs" / "cache").symlink_to(shared_cache)
        with pytest.MonkeyPatch.context() as during_sweep:
            during_sweep.setattr(sweeps, "write_run_folder", keep_state)
            result = invoke("sweep", "image-text", "--methods", "adapter", *SMALL)
        assert result.exit_code == 0, result.output
        store = Store(Store.default_url(folder / "runs"))
        (run,) = [r for r in store.runs() if r.method == "adapter"]
        yield folder, store, run, states[run.key]


def stored_test_scores(store: Store, run) -> dict:
    scores = store.test_scores()
    mine = scores[scores["run_id"] == run.id]
    out: dict = {}
    for task, name, value in zip(mine["task"], mine["name"], mine["value"]):
        out.setdefault(task, {})[name] = 100 * value
    return out


def one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_evaluate_reproduces_the_stored_test_metrics(trained, monkeypatch):
    folder, store, run, trained_state = trained
    rebuilt = []
    load_trainable = run_loading.load_trainable

    def keep_model(model, cfg, path):
        load_trainable(model, cfg, path)
        rebuilt.append(model)

    monkeypatch.setattr(run_loading, "load_trainable", keep_model)
    by_label = invoke("evaluate", LABEL, "--format", "json")
    assert by_label.exit_code == 0, by_label.output
    expected = stored_test_scores(store, run)
    assert set(expected) == set(TASKS)
    assert json.loads(by_label.stdout) == expected  # exactly, on report's x100 scale
    # the model evaluated is the trained one, every tensor (frozen ones included) bit for bit
    state = rebuilt[0].state_dict()
    assert set(state) == set(trained_state)
    for name, tensor in trained_state.items():
        assert torch.equal(state[name].cpu(), tensor.cpu()), name

    by_key = invoke("evaluate", run.key, "--format", "json", "--sweep", run.sweep)
    assert by_key.exit_code == 0, by_key.output
    assert json.loads(by_key.stdout) == expected

    text = invoke("evaluate", LABEL)
    assert text.exit_code == 0, text.output
    assert LABEL in text.stdout and "caption" in text.stdout and "CIDEr" in text.stdout
    assert f"{expected['nlvr']['score']:.2f}" in text.stdout


def test_evaluate_val_split_matches_the_last_epoch(trained):
    folder, store, run, _ = trained
    result = invoke("evaluate", LABEL, "--split", "val", "--format", "json")
    assert result.exit_code == 0, result.output
    history = store.val_history(run.id)
    last = history[history["epoch"] == history["epoch"].max()]
    expected: dict = {}
    for task, name, value in zip(last["task"], last["name"], last["value"]):
        expected.setdefault(task, {})[name] = 100 * value
    assert json.loads(result.stdout) == expected


def test_prediction_files_round_trip(trained, tmp_path):
    folder, store, run, _ = trained
    out = tmp_path / "predictions"
    result = invoke("evaluate", LABEL, "--format", "json", "--predictions-out", str(out))
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["caption_test.json", "gqa_test.json", "nlvr_test.csv", "vqa_test.json"]
    cfg = RunConfig.from_dict(run.config)
    test = {t: build_suite(cfg.data, cfg.tasks).examples[t]["test"] for t in TASKS}

    def records(name, id_key, text_key):
        data = json.loads((out / name).read_text())
        assert isinstance(data, list) and all(set(r) == {id_key, text_key} for r in data)
        assert all(isinstance(r[text_key], str) for r in data)
        ids = [r[id_key] for r in data]
        assert sorted(ids) == sorted(e.uid for e in test[name.split("_")[0]])  # synthetic: the uids, once each
        return {r[id_key]: r[text_key] for r in data}

    vqa = records("vqa_test.json", "question_id", "answer")
    accuracy = sum(vqa_accuracy(vqa[e.uid], list(e.answers)) for e in test["vqa"]) / len(test["vqa"])
    assert 100 * accuracy == pytest.approx(scores["vqa"]["score"], abs=1e-9)

    captions = records("caption_test.json", "image_id", "caption")
    rescored = caption_scores(captions, {e.uid: list(e.answers) for e in test["caption"]})
    assert 100 * rescored["CIDEr"] == pytest.approx(scores["caption"]["CIDEr"], abs=1e-9)
    assert 100 * rescored["BLEU-4"] == pytest.approx(scores["caption"]["BLEU-4"], abs=1e-9)

    gqa = records("gqa_test.json", "questionId", "prediction")
    exact = sum(gqa[e.uid] == e.answers[0] for e in test["gqa"]) / len(test["gqa"])
    assert 100 * exact == pytest.approx(scores["gqa"]["score"], abs=1e-9)

    rows = list(csv.reader((out / "nlvr_test.csv").read_text().splitlines()))
    assert all(len(row) == 2 and row[1] in ("True", "False") for row in rows)
    assert sorted(row[0] for row in rows) == sorted(e.uid for e in test["nlvr"])
    nlvr = dict(rows)
    correct = sum(nlvr[e.uid] == e.answers[0].capitalize() for e in test["nlvr"]) / len(test["nlvr"])
    assert 100 * correct == pytest.approx(scores["nlvr"]["score"], abs=1e-9)


def test_mismatched_weights_are_one_line_errors(trained):
    folder, store, run, _ = trained
    weights = folder / "runs" / run.sweep / run.key / "trainable.safetensors"
    backup = weights.with_name("backup.safetensors")
    shutil.copyfile(weights, backup)
    try:
        tensors = load_file(str(weights))
        removed = sorted(tensors)[0]
        save_file({n: t for n, t in tensors.items() if n != removed}, str(weights))
        one_line_error(invoke("evaluate", LABEL), str(weights), removed)

        reshaped = sorted(tensors)[-1]
        changed = dict(tensors)
        changed[reshaped] = torch.zeros(*tensors[reshaped].shape[:-1], tensors[reshaped].shape[-1] + 1)
        save_file(changed, str(weights))
        one_line_error(invoke("evaluate", LABEL), str(weights), reshaped, "shape")

        save_file({**tensors, "not.a.parameter": torch.zeros(2)}, str(weights))
        one_line_error(invoke("evaluate", LABEL), str(weights), "not.a.parameter")

        weights.write_bytes(b"not safetensors")
        one_line_error(invoke("evaluate", LABEL), str(weights))

        weights.unlink()
        one_line_error(invoke("evaluate", LABEL), str(weights), "missing")
    finally:
        shutil.copyfile(backup, weights)
        backup.unlink()
    assert invoke("evaluate", LABEL, "--format", "json").exit_code == 0


@pytest.mark.parametrize(
    "args, parts",
    [
        (["no-such-run"], ["no-such-run", "no run"]),
        ([LABEL, "--sweep", "other-sweep"], [LABEL, "other-sweep"]),
        (["text-only-s0"], ["text-only"]),
        ([LABEL, "--split", "train"], ["--split"]),
        ([LABEL, "--format", "yaml"], ["--format"]),
    ],
)
def test_bad_requests_are_one_line_errors(trained, args, parts):
    one_line_error(invoke("evaluate", *args), *parts)


def test_a_label_of_several_sweeps_names_them(trained):
    folder, store, run, _ = trained
    other = RunConfig.from_dict({**run.config, "optim": {**run.config["optim"], "lr": 0.5}})
    assert other.label() == LABEL and other.key() != run.key
    sweep_id = store.get_or_create_sweep("second", other.suite, other.profile, "test")
    run_id, owner = store.claim_run(sweep_id, other, sweeps.provenance(), run_dir=str(folder / "elsewhere"), fingerprint={})
    store.interrupt_run(run_id, owner, "stopped by the test")
    one_line_error(invoke("evaluate", LABEL), LABEL, "image-text-tiny", "second", "--sweep")
    assert invoke("evaluate", LABEL, "--sweep", "image-text-tiny", "--format", "json").exit_code == 0
    one_line_error(invoke("evaluate", LABEL, "--sweep", "second"), "interrupted", "not done")
