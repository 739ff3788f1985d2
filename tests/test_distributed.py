"""One run on 2 processes (DDP over gloo, launched through torchrun's elastic agent) equals the
1-process run: the same per-step global losses (1e-4 relative), the same metrics; a DDP run stopped
on one rank's request stops on both and resumes exactly; a failing rank is one clear error."""

import copy
import dataclasses
import os
import time

import pytest
import torch
from conftest import FAST_BACKBONE

from vlbench.backbones import load_backbones
from vlbench.checkpoint import CheckpointPolicy
from vlbench.config import DataConfig, OptimConfig, RunConfig
from vlbench.data import TaskData
from vlbench.distributed import LaunchError, destroy, init_from_env, launch
from vlbench.engine import Interrupted, epoch_schedule, train
from vlbench.features import image_features
from vlbench.methods import build_vl_model
from vlbench.tasks import ALL_TASKS, build_suite

TASKS = ("vqa", "gqa", "nlvr", "caption")
NO_DROPOUT = dataclasses.replace(FAST_BACKBONE, lm={**FAST_BACKBONE.lm, "dropout": 0.0, "attention_dropout": 0.0})
# 17 questions per task in batches of 8: every QA task's last batch has 1 row, so one rank's shard is empty
DATA = DataConfig(n_train=17, n_val=6, n_test=6)
OPTIM = OptimConfig(epochs=2, lr=3e-3, batch_size=8, caption_beams=2, caption_max_len=8)
CPU = torch.device("cpu")


def setup(cache):
    backbones = load_backbones(NO_DROPOUT, cache)
    suite = build_suite(DATA, TASKS)
    features = image_features(backbones, suite.image_ids(), suite.bank.render, cache, dataset_key=suite.fingerprint())
    return backbones, {t: TaskData(ALL_TASKS[t], backbones.tokenizer, features, suite.examples[t]) for t in TASKS}


# per-task adapters (on each step the other tasks' modules are unused: DDP's find_unused_parameters),
# and full fine-tuning (it learns enough in 2 tiny epochs for captions to score above 0)
METHODS = {"adapter": ("adapter", "multiple", 8), "full": ("full", None, None)}


def build(backbones, method="adapter"):
    name, sharing, hidden_dim = METHODS[method]
    cfg = RunConfig(method=name, sharing=sharing, hidden_dim=hidden_dim)
    torch.manual_seed(0)
    return build_vl_model(cfg, copy.deepcopy(backbones.lm), backbones.feat_dim, backbones.spec.n_vis_tokens)


def summary(result, seconds, model=None):
    out = {"losses": result.step_losses, "val": result.val_history, "test": result.test, "seconds": seconds}
    if model is not None:  # the trained weights, flat (a plain list crosses the process boundary simply)
        out["weights"] = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]).tolist()
    return out


def decoded(model, data):
    """Every test prediction of the trained model (the tiny run's scores are near 0: compare the strings)."""
    model.eval()
    out = {}
    with torch.no_grad():
        for name, d in data.items():
            model.router.task = name
            examples = d.split("test")
            out[name] = d.predict(model, d.inputs(examples, CPU), OPTIM)
    return out


def ddp_rank(cache, folder, stop_rank, stop_step):
    """One rank: the whole run, then the same run stopped at `stop_step` on `stop_rank`'s request and resumed."""
    dist = init_from_env("cpu")
    try:
        backbones, data = setup(cache)
        plain = {}
        for method in METHODS:
            started = time.perf_counter()
            model = build(backbones, method)
            result = train(model, data, OPTIM, 0, CPU, dist=dist)
            plain[method] = summary(result, time.perf_counter() - started, model)
            plain[method]["decoded"] = decoded(model, data)
        steps = []

        def stop():  # polled after every step and after every epoch end; only one rank asks
            steps.append(1)
            return dist.rank == stop_rank and len(steps) == stop_step + 1

        policy = CheckpointPolicy(folder)
        try:
            train(build(backbones), data, OPTIM, 0, CPU, checkpoints=policy, stop_requested=stop, dist=dist)
            raise AssertionError("not interrupted")
        except Interrupted as e:
            stopped = (e.epoch, e.step)
        resumed = train(build(backbones), data, OPTIM, 0, CPU, checkpoints=policy, dist=dist)
        return {"plain": plain, "stopped": stopped, "resumed": summary(resumed, 0.0), "from": resumed.resumed_from,
                "threads": torch.get_num_threads()}  # fmt: skip
    finally:
        destroy()


def test_two_processes_equal_one(tmp_path, capsys):
    cache = tmp_path / "cache"
    backbones, data = setup(cache)
    per_epoch = len(epoch_schedule(data, OPTIM.batch_size, 0, 0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 ranks (the machine may be shared: no oversubscription)
    ones = {}
    try:
        for method in METHODS:
            started = time.perf_counter()
            model = build(backbones, method)
            ones[method] = summary(train(model, data, OPTIM, 0, CPU), time.perf_counter() - started, model)
            ones[method]["decoded"] = decoded(model, data)
    finally:
        torch.set_num_threads(threads)
    stop_step = per_epoch + 2  # in epoch 1
    started = time.perf_counter()
    ranks = launch(2, ddp_rank, cache, tmp_path / "checkpoint", 1, stop_step)
    launch_seconds = time.perf_counter() - started
    assert set(ranks) == {0, 1} and ranks[0]["threads"] == ranks[1]["threads"] >= 1
    report = []
    for method, one in ones.items():
        two = ranks[0]["plain"][method]
        for key in ("losses", "val", "test", "weights", "decoded"):  # every rank ends with the same numbers
            assert ranks[1]["plain"][method][key] == two[key], (method, key)
        assert len(two["losses"]) == len(one["losses"]) == 2 * per_epoch
        rel = max(abs(a - b) / abs(b) for a, b in zip(two["losses"], one["losses"]))
        weight_diff = (torch.tensor(two["weights"]) - torch.tensor(one["weights"])).abs().max().item()
        assert rel < 1e-4 and weight_diff < 1e-4, (method, rel, weight_diff)
        assert two["test"] == one["test"] and two["val"] == one["val"], method
        assert two["decoded"] == one["decoded"], method  # every test prediction, word for word
        report.append(
            f"\n[ddp] {method}: max relative step-loss difference {rel:.2e} over {len(one['losses'])} steps, "
            f"max trained-weight difference {weight_diff:.2e}; 1 process {one['seconds']:.1f}s, 2 processes "
            f"{two['seconds']:.1f}s; test scores (both) { {t: round(m['score'], 4) for t, m in one['test'].items()} }"
        )
    assert any(m["score"] > 0 for m in ones["full"]["test"].values())  # the metrics compared are not all zero
    two = ranks[0]["plain"]["adapter"]
    # a stop asked by rank 1 alone stopped both ranks at the same step; the resumed DDP run is exact
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == (1, stop_step)
    assert ranks[0]["from"] == {"epoch": 1, "step": stop_step, "epoch_step": 2, "epochs_done": 1}
    for r in (0, 1):
        assert ranks[r]["resumed"]["losses"] == two["losses"]
        assert ranks[r]["resumed"]["test"] == two["test"] and ranks[r]["resumed"]["val"] == two["val"]
    with capsys.disabled():
        print("".join(report) + f"\n[ddp] the launch (2 ranks, 3 runs each) took {launch_seconds:.1f}s")


def failing_rank(message):
    dist = init_from_env("cpu")
    if dist.rank == 1:
        raise ValueError(message)
    torch.distributed.barrier()  # rank 0 waits for a peer that is gone: it must not hang
    destroy()


def test_a_failing_rank_is_one_clear_error():
    started = time.perf_counter()
    with pytest.raises(LaunchError) as info:
        launch(2, failing_rank, "rank 1 fails on purpose")
    message = str(info.value)
    assert info.value.rank == 1 and message.startswith("rank 1 failed: ValueError: rank 1 fails on purpose")
    assert "test_distributed.py" in message and "\n" not in message and len(message) < 300
    assert time.perf_counter() - started < 30


def test_launch_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(LaunchError(1, "ValueError: x")))
    assert e.rank == 1 and str(e) == "rank 1 failed: ValueError: x"


def stops_on_sigterm(ready):
    """A rank that checkpoints-and-returns on SIGTERM, like a run with a stop flag."""
    import signal

    dist = init_from_env("cpu")
    asked = []
    signal.signal(signal.SIGTERM, lambda *_: asked.append(1))
    (ready / f"rank{dist.rank}").touch()
    for polls in range(600):  # at most 30 s: launch is still running when the test signals it
        flag = torch.tensor([len(asked)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            break
        time.sleep(0.05)
    destroy()
    return ("stopped", polls)


def test_sigterm_reaches_the_ranks_and_their_results_come_back(tmp_path):
    """SIGTERM to the launching process is forwarded to the ranks, which stop on it; launch returns
    their values (the elastic agent alone would kill them and lose them) and puts the handler back."""
    import signal
    import threading

    def signal_when_ready():
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"rank{r}").exists() for r in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=signal_when_ready, daemon=True).start()
    ranks = launch(2, stops_on_sigterm, tmp_path)
    assert [ranks[r][0] for r in (0, 1)] == ["stopped", "stopped"] and ranks[0][1] < 590
    assert signal.getsignal(signal.SIGTERM) == before
