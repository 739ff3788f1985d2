"""Parameter accounting against the paper's Table 1 (REFERENCE.md section 3)."""

import pytest
import torch

from vlbench.backbones import BACKBONES, build_lm_from_config
from vlbench.config import RunConfig
from vlbench.methods import get_method
from vlbench.model import VLModel
from vlbench.params import count_parameters

TASKS = ("vqa", "gqa", "nlvr", "caption")
BART_BASE = 139_420_416
VIS_ROWS = 200 * 768
VISUAL_EMBEDDING = 1_582_848


def paper_model(method: str, sharing: str | None, hidden_dim: int | None) -> VLModel:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        lm = build_lm_from_config(BACKBONES["paper"])
        model = VLModel(lm, 2048, 200, pool_size=6)
    get_method(method)(RunConfig(method=method, sharing=sharing, hidden_dim=hidden_dim)).apply(model, TASKS)
    return model


def test_paper_denominator_parts():
    counts = count_parameters(paper_model("full", None, None))
    assert counts.components["lm"]["total"] == BART_BASE
    assert counts.components["vis_tokens"]["total"] == VIS_ROWS
    assert counts.components["visual_embedding"]["total"] == VISUAL_EMBEDDING
    assert counts.total == BART_BASE + VIS_ROWS + VISUAL_EMBEDDING
    assert counts.trainable == counts.total


@pytest.mark.parametrize(
    "method, sharing, hidden_dim, paper_percent",
    [
        ("full", None, None, 100.00),
        ("adapter", "multiple", 96, 12.22),
        ("adapter", "half", 96, 8.36),
        ("adapter", "single", 96, 4.18),
    ],
)
def test_table1_percentages(method, sharing, hidden_dim, paper_percent):
    counts = count_parameters(paper_model(method, sharing, hidden_dim))
    assert counts.percent == pytest.approx(paper_percent, abs=0.01)


def test_single_adapter_breakdown():
    counts = count_parameters(paper_model("adapter", "single", 96))
    per_site = (768 * 96 + 96) + (96 * 768 + 768)
    assert counts.components["method"] == {"trainable": 30 * per_site, "total": 30 * per_site}
    assert counts.components["lm"]["trainable"] == 32 * 2 * 768  # the 32 LayerNorms of BART-base
    assert counts.components["vis_tokens"]["trainable"] == 0
    assert counts.components["visual_embedding"]["trainable"] == VISUAL_EMBEDDING


def test_ablation_counts():
    proj = count_parameters(paper_model("proj-only", None, None))
    assert proj.trainable == VISUAL_EMBEDDING
    proj_ln = count_parameters(paper_model("proj-ln", None, None))
    assert proj_ln.trainable == VISUAL_EMBEDDING + 49_152  # the 32 LayerNorms of BART-base
    assert proj.total == proj_ln.total == BART_BASE + VIS_ROWS + VISUAL_EMBEDDING
