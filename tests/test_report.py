"""Tables 1-5 rendered from a database the tests fill: values, grouping, bold, paper pairing, seeds."""

import json
import math
import re

import pytest
from typer.testing import CliRunner

from vlbench.cli import app
from vlbench.config import IMAGE_TEXT_TASKS, OptimConfig, RunConfig
from vlbench.paper import TABLE1, TABLE3
from vlbench.report import build_table, render
from vlbench.store import Store

TASKS = IMAGE_TEXT_TASKS


def add_run(store, sweep_id, scores, percent, seed=0, cost=None, **config):
    """A finished run with test `scores` (task -> fraction) and an updated-params %."""
    cfg = RunConfig(seed=seed, **config)
    run_id, owner = store.claim_run(sweep_id, cfg, {})
    store.record_params(run_id, owner, int(percent * 100), 10_000, "test", {})
    store.record_metrics(run_id, owner, "test", 0, {t: {"score": v} for t, v in scores.items()})
    store.finish_run(run_id, owner, cost or {})
    return cfg


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.db")
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "test")
    # full fine-tuning: two seeds; adapters at two hidden dims; LoRA; a T5 run; the ablations
    add_run(store, sweep, dict(vqa=0.60, gqa=0.50, nlvr=0.70, caption=1.00), 100.0, seed=0, method="full",
            cost={"train_seconds": 10.0, "samples_per_second": 100.0, "peak_memory_mb": 50.0, "checkpoint_bytes": 2**20})
    add_run(store, sweep, dict(vqa=0.62, gqa=0.52, nlvr=0.72, caption=1.10), 100.0, seed=1, method="full",
            cost={"train_seconds": 12.0, "samples_per_second": 80.0, "peak_memory_mb": 50.0, "checkpoint_bytes": 2**20})
    add_run(store, sweep, dict(vqa=0.58, gqa=0.49, nlvr=0.74, caption=1.05), 4.0, method="adapter", sharing="single",
            hidden_dim=8)
    add_run(store, sweep, dict(vqa=0.59, gqa=0.47, nlvr=0.71, caption=1.20), 7.0, method="adapter", sharing="single",
            hidden_dim=16)
    add_run(store, sweep, dict(vqa=0.55, gqa=0.45, nlvr=0.65, caption=0.90), 6.0, method="lora", sharing="single",
            hidden_dim=8)
    add_run(store, sweep, dict(vqa=0.40, gqa=0.30, nlvr=0.50, caption=0.50), 0.0, method="text-only",
            optim=OptimConfig(epochs=0))
    add_run(store, sweep, dict(vqa=0.66, gqa=0.55, nlvr=0.75, caption=1.13), 100.0, method="full", backbone="tiny-t5")
    add_run(store, sweep, dict(vqa=0.30, gqa=0.20, nlvr=0.52, caption=0.70), 1.0, method="proj-only")
    add_run(store, sweep, dict(vqa=0.45, gqa=0.35, nlvr=0.53, caption=0.95), 1.5, method="proj-ln")
    for method, options, vqa in (("full", {"train_vision": True}, 0.61), ("full", {}, 0.60), ("proj-only", {}, 0.35)):
        add_run(store, sweep, {"vqa": vqa}, 100.0, method=method, tasks=("vqa",),
                method_options=tuple(options.items()))
    return store


def rows_by_method(table):
    return {row["method"]: row for row in table.rows}


def test_table1_values_seeds_and_avg(store):
    table = build_table(store, 1)
    labels = [row["method"] for row in table.rows]
    # the paper's row order, reference row last; T5, Table 3 (VQA only) and ablation runs elsewhere
    assert labels == ["Full fine-tuning", "Single Adapter", "Single Adapter", "Single LoRA", "Text-only prior (no visual input)"]
    full = table.rows[0]
    assert full["seeds"] == 2
    assert full["vqa"] == pytest.approx(61.0) and full["vqa_std"] == pytest.approx(1.41, abs=0.01)  # stdev(60, 62)
    assert full["caption"] == pytest.approx(105.0)
    seed_avgs = [(60 + 50 + 70 + 100) / 4, (62 + 52 + 72 + 110) / 4]
    assert full["avg"] == pytest.approx(sum(seed_avgs) / 2) and full["avg_std"] == pytest.approx(
        (abs(seed_avgs[0] - seed_avgs[1]) / math.sqrt(2)), abs=0.01
    )
    single8 = table.rows[1]
    assert (single8["hidden_dim"], single8["seeds"], single8["vqa_std"]) == (8, 1, None)
    assert single8["params_percent"] == 4.0


def test_bold_is_the_best_of_each_group(store):
    table = build_table(store, 1)
    latex = render(table, "latex")
    lines = [l for l in latex.splitlines() if l.startswith(("Full", "Single", "Text"))]
    full, single8, single16, lora, prior = lines
    # full fine-tuning is alone in its group: every score bold; among PEFT rows the best per column
    assert full.count(r"\textbf") == 5
    assert r"\textbf{58.00}" not in single8 and r"\textbf{59.00}" in single16  # VQA: d16 best
    assert r"\textbf{74.00}" in single8  # NLVR2: d8 best
    assert r"\textbf{120.00}" in single16  # caption
    assert r"\textbf" not in lora and r"\textbf" not in prior  # never best; the prior is a reference row
    assert latex.count(r"\midrule") == 3  # after the header and between the three groups
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"$\pm$" in latex


def test_compare_paper_pairs_rows_and_lists_missing_ones(store):
    table = build_table(store, 1, compare_paper=True)
    rows = rows_by_method(table)
    full = rows["Full fine-tuning"]
    assert full["vqa_paper"] == TABLE1[0].scores["vqa"] and full["avg_paper"] == TABLE1[0].avg
    assert full["vqa_diff"] == pytest.approx(61.0 - 67.6)
    assert full["params_percent_paper"] == 100.0
    missing = rows["Multiple Compacters"]  # a paper row without a run of ours
    assert missing["seeds"] == 0 and missing["vqa"] is None and missing["vqa_paper"] == 64.6
    assert len(table.rows) == 5 + len(TABLE1) - 3  # ours plus the 8 paper rows we did not run
    assert any("profile tiny" in note for note in table.notes)
    md = render(table, "markdown")
    assert "| paper | Δ |" in md.splitlines()[2] or "Δ" in md
    assert "-6.60" in md  # the VQA difference, signed


def test_table2_t5_table3_clip_and_table5_ablation(store):
    t2 = build_table(store, 2)
    assert [r["method"] for r in t2.rows] == ["Full fine-tuning"] and t2.rows[0]["vqa"] == pytest.approx(66.0)

    t3 = build_table(store, 3, compare_paper=True)
    rows = rows_by_method(t3)
    assert rows["CLIP fine-tuned + BART fine-tuned"]["vqa"] == pytest.approx(61.0)
    assert rows["CLIP fine-tuned + BART fine-tuned"]["vqa_paper"] == TABLE3[0].scores["vqa"]
    assert rows["CLIP frozen + BART frozen"]["vqa"] == pytest.approx(35.0)
    assert rows["CLIP fine-tuned + BART frozen"]["seeds"] == 0  # in the paper, not run here
    assert "avg" not in t3.score_keys

    t5 = build_table(store, 5)
    assert [r["method"] for r in t5.rows] == [
        "θV→L only", "θV→L + LayerNorm", "Single Adapter", "Single Adapter", "Text-only prior (no visual input)",
    ]  # fmt: skip


def test_cost_columns(store):
    table = build_table(store, 1, cost=True)
    full = table.rows[0]
    assert full["train_seconds"] == pytest.approx(11.0) and full["samples_per_second"] == pytest.approx(90.0)
    assert full["checkpoint_mb"] == pytest.approx(1.0) and full["peak_memory_mb"] == pytest.approx(50.0)
    assert ("train_seconds", "train s") in table.columns
    assert "peak_reserved_mb" not in dict(table.columns)  # CPU runs: CUDA's reserved memory has no column


def test_cost_shows_cuda_reserved_memory_where_runs_have_it(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.db")
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "test")
    cost = {"peak_memory_mb": 900.0, "peak_reserved_mb": 1024.0}
    add_run(store, sweep, dict(vqa=0.6, gqa=0.5, nlvr=0.7, caption=1.0), 100.0, method="full", cost=cost)
    (run,) = store.runs()
    assert run.peak_reserved_mb == 1024.0  # revision 0005
    table = build_table(store, 1, cost=True)
    assert ("peak_reserved_mb", "reserved MB") in table.columns and table.rows[0]["peak_reserved_mb"] == 1024.0


def test_machine_and_html_formats(store):
    table = build_table(store, 1)
    records = json.loads(render(table, "json"))
    assert records[0]["method"] == "Full fine-tuning" and records[0]["vqa_std"] == pytest.approx(1.41, abs=0.01)
    assert all(not k.startswith("_") for k in records[0])
    csv_lines = render(table, "csv").splitlines()
    assert csv_lines[0].startswith("method,hidden_dim,params_percent,seeds,vqa,vqa_std")
    page = render(table, "html")
    assert page.count("<tr") == 1 + len(table.rows) and "<b>61.00 ± 1.41</b>" in page


def test_rows_that_differ_only_in_settings_say_how(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/d.db")
    sweep = store.get_or_create_sweep("s", "image-text", "tiny", "test")
    for lr in (1e-3, 1e-2):
        add_run(store, sweep, dict(vqa=0.5, gqa=0.5, nlvr=0.5, caption=0.5), 4.0, method="adapter",
                sharing="single", hidden_dim=8, optim=OptimConfig(lr=lr))
    labels = sorted(row["method"] for row in build_table(store, 1).rows)
    assert labels == ["Single Adapter [lr=0.001]", "Single Adapter [lr=0.01]"]


def test_filters_and_empty_message(store, tmp_path):
    assert len(build_table(store, 1, sweep="s").rows) == 5
    runner = CliRunner()
    db = f"sqlite:///{tmp_path}/r.db"
    result = runner.invoke(app, ["report", "--table", "4", "--db", db])
    assert result.exit_code == 2 and "vlbench sweep video-text --preset table4" in result.output
    result = runner.invoke(app, ["report", "--table", "1", "--db", db, "--sweep", "nope"])
    assert result.exit_code == 2 and "--sweep nope" in result.output
    result = runner.invoke(app, ["report", "--table", "9", "--db", db])
    assert result.exit_code == 2 and "--table" in result.output


def test_cli_writes_every_format(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path}/r.db"
    for fmt, ext in (("markdown", "md"), ("latex", "tex"), ("csv", "csv"), ("json", "json"), ("html", "html")):
        result = CliRunner().invoke(app, ["report", "--table", "1", "--db", db, "--format", fmt, "--compare-paper"])
        assert result.exit_code == 0, result.output
        written = (tmp_path / "reports" / f"table1.{ext}").read_text()
        assert "Multiple Compacters" in written
    assert re.search(r"\| \*\*61\.00 ± 1\.41\*\* \|", (tmp_path / "reports" / "table1.md").read_text())
