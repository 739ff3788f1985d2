"""Checkpoint and exact resume: a run stopped anywhere and resumed equals the run never stopped, bit
for bit (CPU, fixed seed); broken or foreign checkpoints are refused naming the file; no pickle."""

import copy
import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import FAST_BACKBONE

from vlbench.backbones import load_backbones
from vlbench.checkpoint import (
    CheckpointError,
    CheckpointPolicy,
    has_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from vlbench.config import DataConfig, OptimConfig, RunConfig
from vlbench.data import TaskData
from vlbench.engine import Interrupted, epoch_schedule, train
from vlbench.features import image_features
from vlbench.methods import build_vl_model
from vlbench.tasks import ALL_TASKS, build_suite

TASKS = ("vqa", "gqa", "nlvr", "caption")
# dropout stays on (FAST_BACKBONE's 0.1) and VQA samples its targets: both RNG streams must resume
OPTIM = OptimConfig(epochs=2, lr=3e-3, batch_size=8, caption_beams=2, caption_max_len=8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    backbones = load_backbones(FAST_BACKBONE, cache)
    data_cfg = DataConfig(n_train=16, n_val=6, n_test=6)
    suite = build_suite(data_cfg, TASKS)
    features = image_features(backbones, suite.image_ids(), suite.bank.render, cache, dataset_key=suite.fingerprint())
    data = {t: TaskData(ALL_TASKS[t], backbones.tokenizer, features, suite.examples[t]) for t in TASKS}
    return backbones, data


def build(backbones, method="adapter", sharing="multiple", seed=0):
    """A fresh model, deterministic in the seed (as sweep.build_model)."""
    cfg = RunConfig(method=method, sharing=sharing, hidden_dim=8 if method == "adapter" else None, seed=seed)
    torch.manual_seed(seed)
    return build_vl_model(cfg, copy.deepcopy(backbones.lm), backbones.feat_dim, backbones.spec.n_vis_tokens)


def steps_per_epoch(data):
    return len(epoch_schedule(data, OPTIM.batch_size, 0, 0))


def stop_at_call(n):
    """A stop_requested that answers true on its n-th call (1-based): the engine polls after every
    optimizer step and once more after every epoch's evaluation and checkpoint."""
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == n

    return stop


@pytest.fixture(scope="module")
def reference(setup):
    backbones, data = setup
    epochs = []
    model = build(backbones)
    result = train(model, data, OPTIM, 0, CPU, on_epoch_end=lambda e, m: epochs.append((e, m)))
    assert len(result.step_losses) == result.steps == 2 * steps_per_epoch(data)
    assert result.resumed_from is None and epochs == list(enumerate(result.val_history))
    result.weights = trainable(model)
    return result


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_run(result, reference):
    assert result.step_losses == reference.step_losses  # floats, bitwise
    assert result.val_history == reference.val_history
    assert result.test == reference.test
    assert result.steps == reference.steps
    assert result.weights.keys() == reference.weights.keys()
    assert all(torch.equal(result.weights[n], reference.weights[n]) for n in reference.weights)  # bitwise


def resume(backbones, data, policy, **kw):
    epochs = []
    model = build(backbones)
    result = train(model, data, OPTIM, 0, CPU, checkpoints=policy, on_epoch_end=lambda e, m: epochs.append(e), **kw)
    result.weights = trainable(model)
    return result, epochs


def test_stop_mid_epoch_and_resume_exactly(setup, reference, tmp_path):
    backbones, data = setup
    n = steps_per_epoch(data)
    policy = CheckpointPolicy(tmp_path / "checkpoint")
    stop_step = n + 3  # epoch 1, 3 batches in (one epoch-end poll happened before)
    with pytest.raises(Interrupted) as info:
        train(build(backbones), data, OPTIM, 0, CPU, checkpoints=policy, stop_requested=stop_at_call(stop_step + 1))
    assert (info.value.epoch, info.value.step) == (1, stop_step) and info.value.checkpoint == policy.folder
    assert has_checkpoint(policy.folder)
    files = [p for p in policy.folder.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files)  # nothing to unpickle
    result, epochs = resume(backbones, data, policy)
    assert result.resumed_from == {"epoch": 1, "step": stop_step, "epoch_step": 3, "epochs_done": 1}
    assert epochs == [0, 1]  # epoch 0's metrics are given again (from the checkpoint), then epoch 1's
    assert_same_run(result, reference)
    remove_checkpoint(policy.folder)
    assert not has_checkpoint(policy.folder) and not policy.folder.exists()


@pytest.mark.parametrize("after_eval", [False, True], ids=["last-step", "after-epoch-end"])
def test_stop_at_epoch_end_and_resume_exactly(setup, reference, tmp_path, after_eval):
    """Stopped after the epoch's last step (before its evaluation), or after its evaluation and checkpoint."""
    backbones, data = setup
    n = steps_per_epoch(data)
    policy = CheckpointPolicy(tmp_path / "checkpoint")
    with pytest.raises(Interrupted) as info:
        train(build(backbones), data, OPTIM, 0, CPU, checkpoints=policy, stop_requested=stop_at_call(n + after_eval))
    assert (info.value.epoch, info.value.step) == (0, n)
    result, epochs = resume(backbones, data, policy)
    assert result.resumed_from == {"epoch": 0, "step": n, "epoch_step": n, "epochs_done": int(after_eval)}
    assert epochs == [0, 1]
    assert_same_run(result, reference)


def test_every_steps_checkpoints_survive_a_crash(setup, reference, tmp_path):
    """A run killed between checkpoints (here an exception in on_step) resumes from the last periodic one,
    twice in a row, and still ends as the uninterrupted run."""
    backbones, data = setup
    policy = CheckpointPolicy(tmp_path / "checkpoint", every_steps=5)

    def crash_at(step_to_crash):
        def on_step(epoch, step, total, stats):
            assert total == reference.steps
            if step == step_to_crash:
                raise RuntimeError("killed")

        return on_step

    for crash in (7, 21):  # the second run resumes at step 5 and crashes in epoch 1
        with pytest.raises(RuntimeError, match="killed"):
            train(build(backbones), data, OPTIM, 0, CPU, checkpoints=policy, on_step=crash_at(crash))
    params, state, _ = load_checkpoint(policy.folder)
    assert state["position"]["step"] == 20
    result, _ = resume(backbones, data, policy)
    assert result.resumed_from["step"] == 20
    assert_same_run(result, reference)
    assert len([p for p in policy.folder.iterdir() if p.is_dir()]) == 1  # older snapshots are pruned


def test_resume_reads_no_pickle(setup, tmp_path, monkeypatch):
    backbones, data = setup
    policy = CheckpointPolicy(tmp_path / "checkpoint")
    one_epoch = dataclasses.replace(OPTIM, epochs=1)
    with pytest.raises(Interrupted):
        train(build(backbones), data, one_epoch, 0, CPU, checkpoints=policy, stop_requested=stop_at_call(2))

    def refuse(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    params, state, snapshot = load_checkpoint(policy.folder)
    assert state["position"]["step"] == 2
    assert set(params) == {n for n, p in build(backbones).named_parameters() if p.requires_grad}
    assert isinstance(state["optimizers"][0]["state"][0]["exp_avg"], torch.Tensor)


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory):
    """A checkpoint (after 2 steps of a 1-epoch run), copied fresh by each test that breaks it."""
    backbones, data = setup
    folder = tmp_path_factory.mktemp("saved") / "checkpoint"
    with pytest.raises(Interrupted):
        train(build(backbones), data, dataclasses.replace(OPTIM, epochs=1), 0, CPU,
              checkpoints=CheckpointPolicy(folder), stop_requested=stop_at_call(2))  # fmt: skip
    return folder


def broken_copy(saved, tmp_path):
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.copytree(saved, folder)
    manifest = json.loads((folder / "latest.json").read_text())
    return folder, folder / manifest["snapshot"]


def train_from(setup, folder, optim=None, method="adapter", sharing="multiple"):
    backbones, data = setup
    optim = optim or dataclasses.replace(OPTIM, epochs=1)
    return train(build(backbones, method, sharing), data, optim, 0, CPU, checkpoints=CheckpointPolicy(folder))


@pytest.mark.parametrize(
    "file, damage, problem",
    [
        ("model.safetensors", "truncate", "truncated"),
        ("state.safetensors", "flip", "corrupt"),
        ("state.json", "flip", "corrupt"),
        ("latest.json", "garbage", "unreadable JSON"),
        ("model.safetensors", "delete", "missing"),
    ],
)
def test_damaged_checkpoint_is_refused_naming_the_file(setup, saved, tmp_path, file, damage, problem):
    folder, snapshot = broken_copy(saved, tmp_path)
    path = folder / file if file == "latest.json" else snapshot / file
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        i = len(raw) - 3
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])
    elif damage == "garbage":
        path.write_text('{"format": 1, "snaps')
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as info:
        train_from(setup, folder)
    assert str(path) in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"optim": dataclasses.replace(OPTIM, epochs=1, lr=1e-2)}, "optim.lr: checkpoint 0.003, this run 0.01"),
        ({"sharing": "single"}, "trainable parameter(s) only in the checkpoint"),
        ({"method": "full", "sharing": None}, "trainable parameter(s) only in this run"),
    ],
)
def test_checkpoint_of_another_run_is_refused(setup, saved, tmp_path, change, expect):
    folder, snapshot = broken_copy(saved, tmp_path)
    with pytest.raises(CheckpointError) as info:
        train_from(setup, folder, **change)
    message = str(info.value)
    assert str(snapshot / "state.json") in message and "another run" in message and expect in message


def test_failed_save_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    """A save that dies half-way (here: the second file of the second snapshot) leaves the first loadable."""
    import vlbench.checkpoint as ckpt

    backbones, data = setup
    policy = CheckpointPolicy(tmp_path / "checkpoint", every_steps=2)
    real, calls = ckpt.save_file, []

    def dying_save_file(tensors, path):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk gone")
        real(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", dying_save_file)
    with pytest.raises(OSError, match="disk gone"):
        train(build(backbones), data, dataclasses.replace(OPTIM, epochs=1), 0, CPU, checkpoints=policy)
    _, state, _ = load_checkpoint(policy.folder)
    assert state["position"]["step"] == 2
    assert [p.name for p in policy.folder.iterdir() if p.name.startswith(".tmp")] == []


KILLER = r"""
import sys, torch
from vlbench.checkpoint import save_checkpoint
folder = sys.argv[1]
big = torch.zeros(1 << 20)
for step in range(1, 10**6):
    save_checkpoint(folder, {"w": big + step}, {"position": {"step": step}, "tail": list(range(2000))})
    if step == 1:
        open(folder + ".ready", "w").close()
"""


def test_sigkill_mid_write_leaves_a_loadable_checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for delay in (0.05, 0.23):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(folder)], env=env)
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "checkpoint.ready").exists():
                assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
                time.sleep(0.02)
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        (tmp_path / "checkpoint.ready").unlink()
        params, state, _ = load_checkpoint(folder)
        step = state["position"]["step"]
        assert step >= 1 and torch.equal(params["w"], torch.full((1 << 20,), float(step)))
        assert state["tail"] == list(range(2000))


def test_state_encoding_roundtrip(tmp_path):
    import random

    rng = random.Random(3)
    state = {"position": {"step": 4}, "rng": rng.getstate(), "opt": {0: {"step": torch.tensor(4.0)}, 1: {}},
             "betas": (0.9, 0.999), "nan": float("inf"), "none": None}  # fmt: skip
    save_checkpoint(tmp_path / "c", {"p": torch.arange(3.0)}, state)
    params, back, _ = load_checkpoint(tmp_path / "c")
    assert back["rng"] == rng.getstate() and back["betas"] == (0.9, 0.999) and back["nan"] == float("inf")
    assert set(back["opt"]) == {0, 1} and torch.equal(back["opt"][0]["step"], torch.tensor(4.0))
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(tmp_path / "d", {}, {"bad": object()})


def test_interrupted_carries_its_position_through_pickle(tmp_path):
    e = pickle.loads(pickle.dumps(Interrupted(1, 23, tmp_path)))
    assert (e.epoch, e.step, e.checkpoint) == (1, 23, tmp_path) and "after 23 optimizer steps" in str(e)
    assert "nothing saved" in str(Interrupted(0, 2))
