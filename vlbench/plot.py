"""The paper's Figure 4: score vs updated parameters (%), one line per method family and sharing mode;
with `x="memory"`, score vs peak training memory (the Ladder Side-Tuning paper's Figure 1).

The points are Table 1's rows (vlbench.report.build_table): every configuration averaged over its
seeds, with the standard deviation as an error bar where there are several. The text-only prior is
a horizontal reference line, and so is full fine-tuning against updated parameters (at 100% it would
squash the axis); against memory full fine-tuning is a point. The Pareto frontier (no other point
has less on the x axis and a higher score) is marked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlbench.baselines import is_baseline
from vlbench.config import UserError
from vlbench.files import atomic_write
from vlbench.report import TASK_HEADERS, build_table
from vlbench.store import Store

TASK_CHOICES = ("avg", "vqa", "gqa", "nlvr", "caption")
X_AXES = {  # --x: the row column, the axis label, the title, the file name stem
    "params": ("params_percent", "Updated parameters (%)", "Accuracy vs updated parameters (VL-Adapter Figure 4)", "figure4"),
    "memory": ("peak_memory_mb", "Peak training memory (MB)", "Accuracy vs peak training memory (LST Figure 1)",
               "tradeoff_memory"),
}  # fmt: skip
PLOT_FORMATS = ("png", "pdf", "svg")
FAMILY_COLORS = {
    "adapter": "#1f77b4",
    "compacter": "#2ca02c",
    "hyperformer": "#9467bd",
    "lora": "#d62728",
    "prompt": "#ff7f0e",
    "lst": "#17becf",  # beyond the paper
    "bitfit": "#8c564b",
    "peft": "#e377c2",
    "full": "black",  # a point against memory (a reference line against updated params)
}
# a method's own (marker, line) where it has no sharing modes to tell apart by
METHOD_STYLES = {"lst": ("X", "-"), "bitfit": ("P", ":"), "full": ("*", "")}
SHARING_STYLES = {"multiple": ("o", "-"), "half": ("^", "-."), "single": ("s", "--"), None: ("D", ":")}
# where a hidden-dim label may sit, in points from its marker: tried in order until one overlaps nothing
LABEL_OFFSETS = ((7, 6), (7, -13), (-14, 6), (-14, -13), (9, -3), (-17, -3), (-3, 10), (-3, -16), (12, 12), (-20, 12))


@dataclass
class Series:
    label: str  # "Single Adapter"
    method: str
    sharing: str | None
    points: list[tuple[float, float, float | None, int | None]]  # (x: params % or MB, score, std or None, hidden dim)


@dataclass
class TradeoffData:
    task: str
    series: list[Series]
    references: dict[str, float] = field(default_factory=dict)  # "Full fine-tuning" -> score
    frontier: list[tuple[float, float]] = field(default_factory=list)
    x: str = "params"  # a key of X_AXES


def tradeoff_data(
    store: Store, task: str = "avg", sweep: str | None = None, profile: str | None = None, include_superseded: bool = False,
    x: str = "params",
) -> TradeoffData:
    if task not in TASK_CHOICES:
        raise UserError(f"--task: unknown task '{task}' (choose from {', '.join(TASK_CHOICES)})")
    if x not in X_AXES:
        raise UserError(f"--x: unknown axis '{x}' (choose from {', '.join(X_AXES)})")
    column = X_AXES[x][0]
    try:
        table = build_table(store, 1, sweep=sweep, profile=profile, include_superseded=include_superseded, cost=x == "memory")
    except UserError as e:  # say which sweep makes this figure, not Table 1's
        raise UserError(str(e).replace("--preset table1", "--preset figure4")) from None
    data = TradeoffData(task, [], x=x)
    by_label: dict[str, Series] = {}
    for row in table.rows:
        method, sharing, _ = row["_key"]
        score = row.get(task)
        if score is None:
            continue
        if is_baseline(method) or (method == "full" and x == "params"):
            data.references[row["method"]] = score
            continue
        if row.get(column) is None:
            continue
        # one line per row label without its hidden dim: variants ("[lr=...]") get lines of their own
        series = by_label.setdefault(row["method"], Series(row["method"], method, sharing, []))
        series.points.append((row[column], score, row.get(f"{task}_std"), row["hidden_dim"]))
    data.series = list(by_label.values())
    for s in data.series:
        s.points.sort()
    if not data.series:
        what = "with a recorded peak memory " if x == "memory" else ""
        raise UserError(f"no parameter-efficient runs {what}to plot; run `vlbench sweep image-text --preset figure4` first")
    data.frontier = pareto_frontier([(x, y) for s in data.series for x, y, _, _ in s.points])
    return data


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (less on x, higher score), by x."""
    frontier, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            frontier.append((x, y))
            best = y
    return frontier


def plot_tradeoff(data: TradeoffData, path: Path, log_x: bool = False):
    """Draw and save the figure (format from the suffix); returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    with plt.rc_context({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9, "axes.spines.top": False,
                         "axes.spines.right": False}):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
        for s in data.series:
            marker, line = METHOD_STYLES.get(s.method) or SHARING_STYLES.get(s.sharing, SHARING_STYLES[None])
            xs, ys, errs, _ = zip(*s.points)
            has_err = any(e is not None for e in errs)
            ax.errorbar(
                xs, ys, yerr=[e or 0.0 for e in errs] if has_err else None, label=s.label,
                color=FAMILY_COLORS.get(s.method, "#7f7f7f"), marker=marker, linestyle=line, markersize=6,
                capsize=3, linewidth=1.6,
            )  # fmt: skip
        for name, score in data.references.items():
            color, line = ("black", "-") if name.startswith("Full fine-tuning") else ("#7f7f7f", ":")
            ax.axhline(score, color=color, linestyle=line, linewidth=1.2, label=f"{name} ({score:.1f})")
        fx, fy = zip(*data.frontier)
        ax.step(fx, fy, where="post", color="#bbbbbb", linewidth=6, alpha=0.5, zorder=0, label="Pareto frontier")
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="#444444", linewidths=1.2, zorder=3)
        if log_x:
            ax.set_xscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 1, 2, 10 rather than 10^0
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
        _, x_label, title, _ = X_AXES[data.x]
        ax.set_xlabel(x_label + (", log scale" if log_x else ""))
        ax.set_ylabel(score_label(data.task))
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.margins(x=0.08, y=0.12)
        ax.text(1.01, 0.02, "numbers: hidden dim\n(bottleneck / rank)", transform=ax.transAxes, fontsize=8,
                color="#555555")  # fmt: skip
        label_hidden_dims(fig, ax, data)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=200, format=path.suffix[1:]))
    return fig


def score_label(task: str) -> str:
    if task == "avg":
        return "Average score (accuracy %, CIDEr x100)"
    return f"{TASK_HEADERS[task]} " + ("CIDEr (x100)" if task == "caption" else "accuracy (%)")


def label_hidden_dims(fig, ax, data: TradeoffData) -> None:
    """Each marker's hidden dim, at the first offset where it overlaps no marker and no other label."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout measured here, so the saved labels sit where they were checked
    renderer = fig.canvas.get_renderer()
    points = [(x, y, d) for s in data.series for x, y, _, d in s.points if d is not None]
    radius = 8  # display pixels around a marker (and its frontier ring) kept free of text
    markers = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        markers.append(Bbox.from_extents(px - radius, py - radius, px + radius, py + radius))
    placed = []
    for x, y, d in points:
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(str(d), (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, color="#333333")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed + markers):
                break
            text.remove()
        else:  # every spot taken: keep the first one rather than drop the label
            text = ax.annotate(str(d), (x, y), xytext=LABEL_OFFSETS[0], textcoords="offset points", fontsize=8)
            box = text.get_window_extent(renderer)
        placed.append(box)


def write_tradeoff(
    store: Store,
    reports_dir: Path,
    task: str = "avg",
    fmt: str = "png",
    log_x: bool = False,
    sweep: str | None = None,
    profile: str | None = None,
    include_superseded: bool = False,
    x: str = "params",
) -> Path:
    if fmt not in PLOT_FORMATS:
        raise UserError(f"--format: unknown format '{fmt}' (choose from {', '.join(PLOT_FORMATS)})")
    data = tradeoff_data(store, task, sweep=sweep, profile=profile, include_superseded=include_superseded, x=x)
    path = Path(reports_dir) / f"{X_AXES[x][3]}_{task}.{fmt}"
    fig = plot_tradeoff(data, path, log_x=log_x)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---- training curves (`vlbench plot curves`) ---------------------------------------------------

CURVE_METRICS = {  # --metric -> (axis label, from the training curve (x = step) or the val history (x = epoch))
    "loss": ("Training loss (mean since the last point)", "curve"),
    "lr": ("Learning rate", "curve"),
    "samples_per_s": ("Training samples/s", "curve"),
    **{task: (f"Validation {TASK_HEADERS[task]} score", "val") for task in TASK_CHOICES if task != "avg"},
}


@dataclass
class Curve:
    label: str  # the run's row label, "Single Adapter" (seeds of one config share a curve)
    method: str
    sharing: str | None
    xs: list[float]
    mean: list[float]
    low: list[float]  # the lowest and highest seed at each x (equal to mean for one seed)
    high: list[float]
    seeds: int


def curves_data(store: Store, metric: str = "loss", sweep: str | None = None, profile: str | None = None) -> list[Curve]:
    """One curve per configuration of the current (done, running, interrupted) runs, seeds averaged."""
    from vlbench.report import config_without_seed, row_label

    if metric not in CURVE_METRICS:
        raise UserError(f"--metric: unknown metric '{metric}' (choose from {', '.join(CURVE_METRICS)})")
    runs = [r for status in ("done", "running", "interrupted") for r in store.runs(sweep=sweep, status=status, profile=profile)]
    runs = [r for r in runs if not is_baseline(r.method)]
    if not runs:
        raise UserError("no runs with a training curve; start one with `vlbench sweep image-text`")
    source = CURVE_METRICS[metric][1]
    per_run: dict[int, dict[float, float]] = {}
    if source == "curve":
        points = store.curves([r.id for r in runs])
        for run_id, g in points[points["name"] == metric].groupby("run_id"):
            per_run[run_id] = dict(zip(g["step"].astype(float), g["value"]))
    else:
        for r in runs:
            history = store.val_history(r.id)
            history = history[(history["task"] == metric) & (history["name"] == "score")]
            if len(history):
                per_run[r.id] = dict(zip(history["epoch"].astype(float) + 1, history["value"] * 100))
    groups: dict[str, list] = {}
    for r in runs:
        if r.id in per_run:
            groups.setdefault(config_without_seed(r), []).append(r)
    curves = []
    for group in groups.values():
        first = group[0]
        xs = sorted(set().union(*(per_run[r.id] for r in group)))
        values = [[per_run[r.id][x] for r in group if x in per_run[r.id]] for x in xs]
        curves.append(Curve(row_label(first.method, first.sharing, first.config.get("method_options")), first.method,
                            first.sharing, xs, [sum(v) / len(v) for v in values], [min(v) for v in values],
                            [max(v) for v in values], len(group)))  # fmt: skip
    if not curves:
        raise UserError(f"no run has recorded {metric} yet (runs recorded before training curves have none)")
    return curves


def write_curves(
    store: Store, reports_dir: Path, metric: str = "loss", fmt: str = "png", sweep: str | None = None,
    profile: str | None = None,
) -> Path:
    """`vlbench plot curves`: reports/curves_<metric>.<fmt>, one line per configuration, seeds as a band."""
    if fmt not in PLOT_FORMATS:
        raise UserError(f"--format: unknown format '{fmt}' (choose from {', '.join(PLOT_FORMATS)})")
    curves = curves_data(store, metric, sweep=sweep, profile=profile)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(reports_dir) / f"curves_{metric}.{fmt}"
    with plt.rc_context({"font.size": 11, "legend.fontsize": 9, "axes.spines.top": False, "axes.spines.right": False}):
        fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
        for c in curves:
            color = FAMILY_COLORS.get(c.method, "#7f7f7f")
            _, line = METHOD_STYLES.get(c.method) or SHARING_STYLES.get(c.sharing, SHARING_STYLES[None])
            ax.plot(c.xs, c.mean, color=color, linestyle=line or "-", linewidth=1.6,
                    label=c.label + (f" ({c.seeds} seeds)" if c.seeds > 1 else ""))  # fmt: skip
            if c.seeds > 1:
                ax.fill_between(c.xs, c.low, c.high, color=color, alpha=0.15, linewidth=0)
        label, source = CURVE_METRICS[metric]
        ax.set_xlabel("Optimizer step" if source == "curve" else "Epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=200, format=path.suffix[1:]))
    plt.close(fig)
    return path
