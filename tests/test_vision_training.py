"""Table 3: the CLIP encoder trained inside the model (SGD at its own lr), or frozen; the LM trained or frozen."""

import json

import pytest
import torch
from conftest import FEAT_DIM, paper_model, random_batch
from torch import nn
from typer.testing import CliRunner

from vlbench.backbones import BACKBONES, build_lm_from_config
from vlbench.cli import app
from vlbench.config import OptimConfig, RunConfig, UserError
from vlbench.engine import build_optimizer
from vlbench.grid import GridRequest, expand
from vlbench.methods import build_vl_model, param_groups
from vlbench.params import count_parameters

RN101_GRID_PARAMS = 56_259_936 - 13_740_544  # open_clip RN101 visual tower (ENVIRONMENT.md: 56.3M) minus attnpool


class TinyGrid(nn.Module):
    """A stand-in CLIP grid encoder with a BatchNorm: (N, 3, 16, 16) -> (N, 16, FEAT_DIM)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, FEAT_DIM, 4, stride=4)
        self.bn = nn.BatchNorm2d(FEAT_DIM)

    def forward(self, x):
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


def vision_config(method: str, **options) -> RunConfig:
    return RunConfig(method=method, tasks=("vqa",), method_options=tuple(sorted({"train_vision": True, **options}.items())))


def model_with_vision(method: str, **options):
    torch.manual_seed(0)
    lm = build_lm_from_config(BACKBONES["tiny"], vocab_size=40)
    return build_vl_model(vision_config(method, **options), lm, FEAT_DIM, BACKBONES["tiny"].n_vis_tokens, vision=TinyGrid())


def pixel_batch():
    batch = random_batch()
    del batch["feats"]
    batch["pixels"] = torch.randn(3, 1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    return batch


def test_full_with_clip_trains_clip_with_its_own_sgd():
    model = model_with_vision("full", vision_lr=0.5)
    model.train()
    model.loss(pixel_batch()).backward()
    assert model.vision.conv.weight.grad is not None and model.vision.conv.weight.grad.abs().sum() > 0
    # the method declares CLIP's optimiser as a parameter group; the engine builds it apart
    groups = param_groups(vision_config("full", vision_lr=0.5), model)
    assert [(g.name, g.optimizer, g.lr) for g in groups] == [("vision", "sgd", 0.5)]
    optimizers, _ = build_optimizer(model, OptimConfig(lr=1e-3), total_steps=10, groups=groups)
    adamw, sgd = optimizers
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["initial_lr"] == 0.5
    vision = {id(p) for p in model.vision.parameters()}
    assert {id(p) for p in sgd.param_groups[0]["params"]} == vision
    assert not vision & {id(p) for g in adamw.param_groups for p in g["params"]}


def test_frozen_lm_with_clip_trains_only_clip_and_projection():
    model = model_with_vision("proj-only")
    model.train()
    model.loss(pixel_batch()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith(("vision.", "visual_embedding.")), name


def test_batchnorm_statistics_stay_frozen_in_training():
    model = model_with_vision("full")
    before = model.vision.bn.running_mean.clone()
    model.train()
    assert model.lm.training and not model.vision.bn.training
    model.loss(pixel_batch())
    assert torch.equal(model.vision.bn.running_mean, before)


def test_vision_encoder_given_exactly_when_the_method_trains_it():
    lm = build_lm_from_config(BACKBONES["tiny"], vocab_size=40)
    with pytest.raises(ValueError, match="not used"):
        build_vl_model(RunConfig(method="full"), lm, FEAT_DIM, 8, vision=TinyGrid())
    with pytest.raises(ValueError, match="needed"):
        build_vl_model(RunConfig(method="full", method_options=(("train_vision", True),)), lm, FEAT_DIM, 8)


def test_paper_table3_counts_clip_only_when_it_trains():
    counts = {
        (method, train_vision): count_parameters(paper_model(method, **({"train_vision": True} if train_vision else {})))
        for method in ("full", "proj-only")
        for train_vision in (True, False)
    }
    trained, frozen = counts[("full", True)], counts[("full", False)]
    # the grid path runs stem..layer4: RN101's attention pooling is neither trained nor counted
    assert trained.components["vision"] == {"trainable": RN101_GRID_PARAMS, "total": RN101_GRID_PARAMS}
    assert trained.total - frozen.total == RN101_GRID_PARAMS and frozen.components["vision"]["total"] == 0
    clip_only = counts[("proj-only", True)]
    assert clip_only.trainable == RN101_GRID_PARAMS + counts[("proj-only", False)].trainable


def test_table3_preset_and_refusals():
    configs = expand(GridRequest(preset="table3", options=(("vision_lr", 0.01),)))
    assert {(c.method, c.options.get("train_vision", False)) for c in configs} == {
        ("full", True), ("full", False), ("proj-only", True), ("proj-only", False)
    }
    assert all(c.tasks == ("vqa",) for c in configs)
    # vision_lr only on the jobs that train CLIP: frozen-CLIP jobs keep the keys of plain runs
    assert all(("vision_lr" in c.options) == bool(c.options.get("train_vision")) for c in configs)
    with pytest.raises(UserError, match="--option train_vision"):
        expand(GridRequest(suite="video-text", methods=("full",), options=(("train_vision", True),)))
    with pytest.raises(UserError, match="--preset"):
        expand(GridRequest(suite="video-text", preset="table3"))


def test_table3_sweep_end_to_end(workdir):
    small = ["--epochs", "1", "--n-train", "24", "--n-val", "8", "--n-test", "8", "--batch-size", "8"]
    result = CliRunner().invoke(
        app, ["sweep", "image-text", "--preset", "table3", "--option", "vision_lr=0.01", *small], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["report", "--table", "3", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {
        "CLIP fine-tuned + BART fine-tuned", "CLIP fine-tuned + BART frozen", "CLIP frozen + BART fine-tuned",
        "CLIP frozen + BART frozen", "Text-only prior (no visual input)",
    }  # fmt: skip
    assert all(0 <= r["vqa"] <= 100 for r in rows.values())
    assert rows["CLIP fine-tuned + BART frozen"]["params_percent"] > rows["CLIP frozen + BART frozen"]["params_percent"]
