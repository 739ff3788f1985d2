from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import tiny_vl_model

from vlbench.config import OptimConfig, RunConfig
from vlbench.engine import build_optimizer, epoch_schedule
from vlbench.methods import get_method


def fake_data(sizes):
    return {name: SimpleNamespace(train_items=list(range(n))) for name, n in sizes.items()}


def test_epoch_schedule_lists_every_batch_once_in_proportion():
    data = fake_data({"vqa": 100, "gqa": 50, "nlvr": 10})
    schedule = epoch_schedule(data, batch_size=8, epoch=0, seed=0)
    assert Counter(name for name, _ in schedule) == {"vqa": 13, "gqa": 7, "nlvr": 2}
    for name in data:
        seen = sorted(i for n, batch in schedule if n == name for i in batch)
        assert seen == list(range(len(data[name].train_items)))


def test_epoch_schedule_is_seeded_by_epoch():
    data = fake_data({"vqa": 64, "gqa": 64})
    assert epoch_schedule(data, 8, 0, 0) == epoch_schedule(data, 8, 0, 0)
    assert epoch_schedule(data, 8, 0, 0) != epoch_schedule(data, 8, 1, 0)
    assert epoch_schedule(data, 8, 0, 0) != epoch_schedule(data, 8, 0, 1)


def test_optimizer_decay_groups_and_schedule():
    model = tiny_vl_model()
    get_method("adapter")(RunConfig(method="adapter", sharing="single", hidden_dim=8)).apply(model, ("vqa",))
    optim = OptimConfig(lr=1.0, warmup_ratio=0.1, weight_decay=0.01)
    (optimizer,), (scheduler,) = build_optimizer(model, optim, total_steps=100)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])  # only matrices decay: no biases, no LayerNorm weights
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup over 10% of steps
    assert lrs[50] == pytest.approx((100 - 50) / 90) and lrs[-1] < 0.02  # then linear decay to 0


def test_per_task_batch_sizes_as_the_paper():
    data = fake_data({"vqa": 1000, "nlvr": 500})
    schedule = epoch_schedule(data, {"vqa": 500, "nlvr": 166}, epoch=0, seed=0)
    assert Counter(name for name, _ in schedule) == {"vqa": 2, "nlvr": 4}
    assert max(len(b) for n, b in schedule if n == "nlvr") == 166


def test_paper_profile_batch_sizes_survive_the_store_roundtrip():
    import json

    from vlbench.grid import GridRequest, expand
    from vlbench.profiles import get_profile

    cfg = RunConfig(profile="paper", optim=OptimConfig(task_batch_sizes=(("gqa", 833), ("vqa", 500))))
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.key() == cfg.key() != RunConfig(profile="paper").key()
    assert expand(GridRequest(methods=("full",)))[0].optim.task_batch_sizes == ()  # tiny: one size
    assert dict(get_profile("paper").optim.task_batch_sizes) == {"vqa": 500, "gqa": 833, "nlvr": 166, "caption": 416}
