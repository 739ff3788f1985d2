"""Figure 4 from a database the tests fill: the points, error bars, frontier, labels, files."""

import matplotlib
import pytest
from matplotlib.text import Annotation
from typer.testing import CliRunner

from test_report import add_run
from vlbench.cli import app
from vlbench.plot import pareto_frontier, plot_tradeoff, tradeoff_data
from vlbench.store import Store

matplotlib.use("Agg")


def scores(x):
    return dict(vqa=x, gqa=x - 0.1, nlvr=x + 0.1, caption=x + 0.5)


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/p.db")
    sweep = store.get_or_create_sweep("fig", "image-text", "tiny", "test")
    for seed, x in ((0, 0.60), (1, 0.64)):
        add_run(store, sweep, scores(x), 100.0, seed=seed, method="full")
    add_run(store, sweep, scores(0.30), 0.0, method="text-only")
    points = {  # (method, sharing) -> {hidden dim: (params %, vqa)}
        ("adapter", "single"): {4: (2.0, 0.55), 8: (4.0, 0.60), 16: (8.0, 0.61)},
        ("adapter", "multiple"): {4: (6.0, 0.52), 8: (12.0, 0.58), 16: (24.0, 0.59)},
        ("lora", "single"): {4: (3.0, 0.50), 8: (6.0, 0.57)},
        ("compacter", "single"): {4: (1.0, 0.45), 8: (1.5, 0.48)},
    }
    for (method, sharing), dims in points.items():
        for d, (percent, vqa) in dims.items():
            for seed, jitter in ((0, 0.0), (1, 0.02)):
                add_run(store, sweep, scores(vqa + jitter), percent, seed=seed, method=method, sharing=sharing,
                        hidden_dim=d)  # fmt: skip
    return store


def test_points_references_and_frontier(store):
    data = tradeoff_data(store, task="vqa")
    series = {s.label: s for s in data.series}
    assert set(series) == {"Single Adapter", "Multiple Adapters", "Single LoRA", "Single Compacter"}
    x, y, std, d = series["Single Adapter"].points[1]
    assert (x, d) == (4.0, 8) and y == pytest.approx(61.0) and std == pytest.approx(1.41, abs=0.01)
    assert data.references == {"Full fine-tuning": pytest.approx(62.0), "Text-only prior (no visual input)": pytest.approx(30.0)}
    # compacter 1.0/1.5, then single adapter 2/4/8 dominate everything else
    assert data.frontier == [(1.0, 46.0), (1.5, 49.0), (2.0, 56.0), (4.0, 61.0), (8.0, 62.0)]


def test_pareto_frontier_ignores_dominated_and_tied_points():
    assert pareto_frontier([(1, 5), (2, 4), (2, 7), (3, 7), (4, 9)]) == [(1, 5), (2, 7), (4, 9)]


def test_figure_has_error_bars_legend_and_non_overlapping_labels(store, tmp_path):
    data = tradeoff_data(store, task="avg")
    fig = plot_tradeoff(data, tmp_path / "f.png", log_x=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "Updated parameters (%)" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Single Adapter" in legend and "Pareto frontier" in legend
    assert any(t.startswith("Full fine-tuning (") for t in legend)
    bars = [c for c in ax.containers if hasattr(c, "has_yerr")]
    assert len(bars) == 4 and all(c.has_yerr for c in bars)  # two seeds everywhere: error bars
    labels = [c for c in ax.get_children() if isinstance(c, Annotation)]
    assert sorted(a.get_text() for a in labels) == sorted(["4", "8", "16"] * 2 + ["4", "8"] * 2)
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in labels]
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not overlaps
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_cli_formats_and_errors(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    db = f"sqlite:///{tmp_path}/p.db"
    for fmt in ("png", "pdf", "svg"):
        result = runner.invoke(app, ["plot", "tradeoff", "--db", db, "--format", fmt, "--task", "nlvr"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "reports" / f"figure4_nlvr.{fmt}").stat().st_size > 1000
    assert (tmp_path / "reports" / "figure4_nlvr.svg").read_text().lstrip().startswith("<?xml")
    result = runner.invoke(app, ["plot", "tradeoff", "--db", db, "--task", "bleu"])
    assert result.exit_code == 2 and "--task" in result.output
    empty = f"sqlite:///{tmp_path}/empty.db"
    result = runner.invoke(app, ["plot", "tradeoff", "--db", empty])
    assert result.exit_code == 2 and "no database at" in result.output  # reading creates nothing
    Store(empty)
    result = runner.invoke(app, ["plot", "tradeoff", "--db", empty])
    assert result.exit_code == 2 and "vlbench sweep image-text --preset figure4" in result.output


def test_score_against_peak_training_memory(tmp_path, monkeypatch):
    """--x memory (LST's Figure 1): full fine-tuning is a point, the text-only prior the only line."""
    store = Store(f"sqlite:///{tmp_path}/m.db")
    sweep = store.get_or_create_sweep("mem", "image-text", "tiny", "test")
    for method, sharing, d, percent, vqa, mb in (
        ("full", None, None, 100.0, 0.62, 300.0), ("adapter", "single", 8, 4.0, 0.60, 100.0),
        ("lora", "single", 8, 6.0, 0.57, 150.0), ("adapter", "multiple", 8, 12.0, 0.61, 120.0),
    ):  # fmt: skip
        add_run(store, sweep, scores(vqa), percent, method=method, sharing=sharing, hidden_dim=d,
                cost={"peak_memory_mb": mb})  # fmt: skip
    add_run(store, sweep, scores(0.30), 0.0, method="text-only")
    data = tradeoff_data(store, task="vqa", x="memory")
    points = {s.label: [(x, y) for x, y, _, _ in s.points] for s in data.series}
    assert points == {"Full fine-tuning": [(300.0, 62.0)], "Single Adapter": [(100.0, 60.0)],
                      "Single LoRA": [(150.0, 57.0)], "Multiple Adapters": [(120.0, 61.0)]}  # fmt: skip
    assert list(data.references) == ["Text-only prior (no visual input)"]
    assert data.frontier == [(100.0, 60.0), (120.0, 61.0), (300.0, 62.0)]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plot", "tradeoff", "--task", "vqa", "--x", "memory", "--db", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "tradeoff_memory_vqa.png").stat().st_size > 1000
    result = CliRunner().invoke(app, ["plot", "tradeoff", "--x", "time", "--db", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code != 0 and "--x: unknown axis 'time'" in result.output
