"""Parameter accounting against the paper's Table 1 (docs/paper-facts.md §3)."""

import json

import pytest
from typer.testing import CliRunner

from conftest import paper_model
from vlbench.cli import app
from vlbench.paper import TABLE1, TABLE4
from vlbench.params import count_parameters

TASKS = ("vqa", "gqa", "nlvr", "caption")
BART_BASE = 139_420_416
VIS_ROWS = 200 * 768
VISUAL_EMBEDDING = 1_582_848


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


def params_json(*args: str) -> list[dict]:
    result = CliRunner().invoke(app, ["params", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("suite, table", [("image-text", TABLE1), ("video-text", TABLE4)])
def test_params_command_reproduces_the_paper_column(suite, table):
    """`vlbench params <suite> --profile paper`: every row of Table 1 (image) / Table 4 (video) within 0.01."""
    rows = params_json(suite, "--profile", "paper")
    assert [r["method"] for r in rows] == [p.label for p in table]
    for row, paper in zip(rows, table):
        assert set(row) == {"method", "trainable", "total", "percent"}
        assert row["percent"] == pytest.approx(paper.params_percent, abs=0.01), row["method"]
        assert row["percent"] == pytest.approx(100 * row["trainable"] / row["total"], abs=1e-4)


def test_params_command_for_chosen_jobs():
    rows = params_json("image-text", "--methods", "adapter,lora", "--sharing", "single", "--hidden-dims", "48,96")
    assert [(r["method"], r["sharing"], r["hidden_dim"]) for r in rows] == [
        ("adapter", "single", 48), ("adapter", "single", 96), ("lora", "single", 48), ("lora", "single", 96)
    ]
    assert rows[1]["percent"] == pytest.approx(4.18, abs=0.01)
    assert rows[0]["percent"] < rows[1]["percent"]
    # method knobs as on sweep: the paper's prompt MLP width gives the paper's 2.00%, a narrower one less
    (paper_width,) = params_json("image-text", "--methods", "prompt", "--option", "prompt_mid_dim=800")
    (narrow,) = params_json("image-text", "--methods", "prompt", "--option", "prompt_mid_dim=100")
    assert paper_width["percent"] == pytest.approx(2.00, abs=0.01) and narrow["percent"] < paper_width["percent"]


def test_video_model_denominator():
    """The video model is BART-base on 512-d CLIP ViT-B/32 frame embeddings."""
    rows = params_json("video-text", "--profile", "paper")
    # theta V->L for 512-d features: Linear(512, d) + LN, Linear(5, d) + LN, Embedding(2, d)
    visual_embedding = (512 * 768 + 768) + 2 * 768 + (5 * 768 + 768) + 2 * 768 + 2 * 768
    assert rows[0]["total"] == BART_BASE + VIS_ROWS + visual_embedding


def tiny_column() -> dict[str, float]:
    """The tiny profile's Table 1 updated-params %, by row label."""
    from vlbench.params import paper_table_params

    return {row["method"]: row["percent"] for row in paper_table_params("image-text", "tiny")}


def ratios_to_paper(tiny: dict[str, float]) -> dict[str, float]:
    """Each Table 1 row's tiny updated-params % over the paper's."""
    paper = {row.label: row.params_percent for row in TABLE1}
    return {label: percent / paper[label] for label, percent in tiny.items()}


def test_tiny_profile_scales_the_paper_sizes_by_width_and_depth():
    """Hyperformer's and the prompts' knobs keep the share of the model they have in the paper: an
    embedding width scales with the LM width, a module held once per model (not per layer) with width x
    depth, Hyperformer's conditioning with depth. At the paper's sizes they held 57% / 63% of the tiny
    model; scaled by the width alone, 21.7% / 17.4%."""
    from vlbench.backbones import BACKBONES
    from vlbench.grid import GridRequest, expand
    from vlbench.methods.hyperformer import Hyperformer
    from vlbench.methods.prompt import PromptTuning

    paper, tiny = BACKBONES["paper"].lm, BACKBONES["tiny"].lm
    width = tiny["d_model"] / paper["d_model"]
    depth = (tiny["encoder_layers"] + tiny["decoder_layers"]) / (paper["encoder_layers"] + paper["decoder_layers"])
    hyper, prompt = Hyperformer.Options(), PromptTuning.Options()
    expected = {
        "hyperformer": {
            "task_embedding_dim": round(hyper.task_embedding_dim * width),
            "hyper_projector_dim": round(hyper.hyper_projector_dim * width * depth),
            # (8 + 1) x depth - 1 = 2, raised to 4: a LayerNorm leaves a 2-vector only its sign
            "hyper_condition_dim": max(4, round((hyper.hyper_condition_dim + 1) * depth) - 1),
        },
        "prompt": {"prompt_mid_dim": round(prompt.prompt_mid_dim * width * depth)},
    }
    assert expected == {"hyperformer": {"task_embedding_dim": 43, "hyper_projector_dim": 4, "hyper_condition_dim": 4},
                        "prompt": {"prompt_mid_dim": 22}}
    for profile in ("tiny", "paper"):
        configs = {c.method: c for c in expand(GridRequest(profile=profile, methods=("hyperformer", "prompt")))}
        for method in ("hyperformer", "prompt"):
            assert dict(configs[method].method_options) == (expected[method] if profile == "tiny" else {})


def test_tiny_updated_params_column():
    """Issue 12's target: every row of the tiny profile's Table 1 column within 1.5x of the paper's,
    pinned where it stands (Hyperformer 1.41x, Single Prompt 1.37x, Single Compacter 1.35x, Multiple
    LoRA 0.70x; before the English vocabulary and the narrower CLIP grid, Single Prompt was 3.72x),
    and each family in the paper's order, multiple > half > single."""
    tiny = tiny_column()
    ratios = ratios_to_paper(tiny)
    assert all(1 / 1.5 <= r <= 1.5 for r in ratios.values()), ratios
    assert ratios["Hyperformer"] == pytest.approx(1.41, abs=0.01), ratios
    assert ratios["Multiple LoRA"] == pytest.approx(0.70, abs=0.01), ratios
    assert tiny["Multiple Adapters"] > tiny["Half-shared Adapters"] > tiny["Single Adapter"]
    assert tiny["Multiple Compacters"] > tiny["Single Compacter"]
    assert tiny["Multiple Prompts"] > tiny["Single Prompt"] and tiny["Multiple LoRA"] > tiny["Single LoRA"]


def test_tiny_table2_column_is_the_papers_clip_t5_column():
    """Table 2's Single Adapter is a quarter of the LM width (192 on T5-base, 7.98%); the tiny T5's
    is too (16): 6.87%, where the tiny default d=8 would give 4.68% (0.59x the paper's)."""
    from vlbench.grid import GridRequest, expand
    from vlbench.paper import TABLE2
    from vlbench.params import params_rows

    for profile, dim in (("tiny", 16), ("paper", 192)):
        configs = expand(GridRequest(profile=profile, preset="table2"))
        assert {(c.method, c.hidden_dim) for c in configs} == {("full", None), ("adapter", dim)}
        assert {c.backbone for c in configs} == {"tiny-t5" if profile == "tiny" else "paper-t5"}
    rows = params_rows(expand(GridRequest(profile="tiny", preset="table2")), [row.label for row in TABLE2])
    ratios = {row["method"]: row["percent"] / paper.params_percent for row, paper in zip(rows, TABLE2)}
    assert ratios["Single Adapter"] == pytest.approx(6.87 / 7.98, abs=0.01), ratios


def test_tiny_lm_embedding_share_near_bart_bases():
    """BART-base's embedding is 27.7% of it; the tiny LMs' word embeddings (~2950 words, mostly the
    English sentences) 43-51% of theirs, where the tasks' ~90 words alone gave 2%. Near enough for the
    column above; fewer words (those occurring 3 times, 36%) left Hyperformer at 1.56x."""
    from vlbench.backbones import BACKBONES, lm_from_spec
    from vlbench.pretrain import shared_tiny_tokenizer, text_vocab_size

    def share(lm):
        return lm.get_input_embeddings().weight.numel() / sum(p.numel() for p in lm.parameters())

    bart_base = 50265 * 768 / BART_BASE
    assert bart_base == pytest.approx(0.277, abs=1e-3)
    for name in ("tiny", "tiny-t5", "tiny-causal"):
        spec = BACKBONES[name]
        assert 0.42 <= share(lm_from_spec(spec, vocab_size=text_vocab_size(spec))) <= 0.52, name
    # the three specs read one corpus: their tokenizer is trained once per process
    assert len({id(shared_tiny_tokenizer(BACKBONES[name])) for name in ("tiny", "tiny-t5", "tiny-causal")}) == 1
