"""Paper-style tables from the store (it reads nothing else).

    build_table(store, number, ...) -> ReportTable   the rows of one of the paper's tables
    render(table, fmt) -> str                         markdown | latex | csv | json | html

A row is one configuration: every finished run with the same config except its seed. Scores are
test-split, x100 (accuracy %, CIDEr x100), the mean over seeds and, with several seeds, the sample
standard deviation. Which runs belong to which table is data (TABLES): the suite, the language
model, the tasks trained on, and which methods the table shows.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vlbench.baselines import BASELINES
from vlbench.config import IMAGE_TEXT_TASKS, VIDEO_TEXT_TASKS, UserError
from vlbench.files import atomic_write
from vlbench.paper import TABLE1, TABLE2, TABLE3, TABLE4, TABLE5, PaperRow
from vlbench.store import RunRecord, Store

# methods that came after the paper (issue 14): their own group, below the paper's rows (which keep
# their order) and above the reference row; bold marks the best of this group separately
BEYOND_PAPER_LABELS = {
    ("lst", "single"): "Ladder Side-Tuning",
    ("bitfit", None): "BitFit",
    ("peft", "single"): "PEFT",  # a row per PEFT config, named after it (row_label)
    ("peft", "multiple"): "PEFT (per task)",
}
# (method, sharing) -> the paper's row label, in the paper's row order
ROW_LABELS = {
    ("full", None): "Full fine-tuning",
    ("adapter", "multiple"): "Multiple Adapters",
    ("adapter", "half"): "Half-shared Adapters",
    ("adapter", "single"): "Single Adapter",
    ("hyperformer", None): "Hyperformer",
    ("compacter", "multiple"): "Multiple Compacters",
    ("compacter", "single"): "Single Compacter",
    ("lora", "multiple"): "Multiple LoRA",
    ("lora", "single"): "Single LoRA",
    ("prompt", "multiple"): "Multiple Prompts",
    ("prompt", "single"): "Single Prompt",
    ("proj-only", None): "θV→L only",
    ("proj-ln", None): "θV→L + LayerNorm",
    **BEYOND_PAPER_LABELS,
    **{(name, None): baseline.label for name, baseline in BASELINES.items()},
}
REFERENCE_METHODS = tuple(BASELINES)  # rows shown for reference, never bold
BEYOND_PAPER_METHODS = tuple(method for method, _ in BEYOND_PAPER_LABELS)
PAPER_ROW_OPTIONS = ("train_vision",)  # method options that make a different paper row (Table 3)
TASK_HEADERS = {
    "vqa": "VQA", "gqa": "GQA", "nlvr": "NLVR2", "caption": "COCO Cap.",
    "tvqa": "TVQA", "how2qa": "How2QA", "tvc": "TVC", "yc2c": "YC2C",
}  # fmt: skip
COST_COLUMNS = {
    "train_seconds": "train s",
    "samples_per_second": "samples/s",
    "peak_memory_mb": "peak MB",
    "peak_reserved_mb": "reserved MB",  # CUDA only: a column only where some row has it
    "checkpoint_mb": "ckpt MB",
}
FORMATS = {"markdown": "md", "latex": "tex", "csv": "csv", "json": "json", "html": "html"}


def row_label(method: str, sharing: str | None, options: dict | None = None) -> str:
    label = ROW_LABELS.get((method, sharing), f"{method} ({sharing})" if sharing else method)
    if method == "peft" and (options or {}).get("config"):  # "PEFT ia3", "PEFT my_dora (per task)"
        label = label.replace("PEFT", f"PEFT {Path(str(options['config'])).stem}", 1)
    if (options or {}).get("train_vision"):
        label += " + CLIP fine-tuned"
    return label


def clip_lm_label(method: str, sharing: str | None, options: dict) -> str:
    """Table 3's rows: is CLIP trained, is the language model trained."""
    if method not in ("full", "proj-only"):
        return row_label(method, sharing, options)
    clip = "fine-tuned" if options.get("train_vision") else "frozen"
    lm = "fine-tuned" if method == "full" else "frozen"
    return f"CLIP {clip} + BART {lm}"


@dataclass(frozen=True)
class TableSpec:
    number: int
    title: str
    suite: str
    lm: str  # "bart" | "t5": the language model of the runs it shows
    tasks: tuple[str, ...]  # the runs were trained (and are scored) on exactly these tasks
    paper: tuple[PaperRow, ...]
    sweep_hint: str  # the command that fills the table
    shows: Callable[[str, str | None], bool] = lambda method, sharing: True  # which (method, sharing) rows
    label: Callable[[str, str | None, dict], str] = row_label


ABLATIONS = ("proj-only", "proj-ln")
TABLES = {
    1: TableSpec(
        1, "Multi-task image-text, CLIP-BART", "image-text", "bart", IMAGE_TEXT_TASKS, TABLE1,
        "vlbench sweep image-text --preset table1", shows=lambda m, s: m not in ABLATIONS,
    ),
    2: TableSpec(
        2, "Multi-task image-text, CLIP-T5", "image-text", "t5", IMAGE_TEXT_TASKS, TABLE2,
        "vlbench sweep image-text --preset table2",
    ),
    3: TableSpec(
        3, "VQA with CLIP and BART fine-tuned or frozen", "image-text", "bart", ("vqa",), TABLE3,
        "vlbench sweep image-text --preset table3", label=clip_lm_label,
    ),
    4: TableSpec(
        4, "Multi-task video-text, CLIP-BART", "video-text", "bart", VIDEO_TEXT_TASKS, TABLE4,
        "vlbench sweep video-text --preset table4",
    ),
    5: TableSpec(
        5, "Which components train (ablation)", "image-text", "bart", IMAGE_TEXT_TASKS, TABLE5,
        "vlbench sweep image-text --preset table5",
        shows=lambda m, s: m in ABLATIONS or m in BASELINES or (m, s) == ("adapter", "single"),
    ),
}  # fmt: skip


@dataclass
class ReportTable:
    spec: TableSpec
    rows: list[dict]  # flat records: what csv/json print
    columns: list[tuple[str, str]]  # (record key, header) shown by the human formats, in order
    score_keys: list[str]  # columns where the best of each group is bold (the tasks and the avg)
    notes: list[str] = field(default_factory=list)


def get_spec(number: int) -> TableSpec:
    if number not in TABLES:
        raise UserError(f"--table: no table {number} (choose from {', '.join(map(str, TABLES))})")
    return TABLES[number]


def build_table(
    store: Store,
    number: int,
    sweep: str | None = None,
    profile: str | None = None,
    compare_paper: bool = False,
    cost: bool = False,
    include_superseded: bool = False,
    lm: str | None = None,
) -> ReportTable:
    """The table from the current runs; with `include_superseded` also from runs whose fingerprint is
    no longer today's, as rows of their own marked "(superseded)". `lm`: the table's rows on another
    language model family than the paper's (e.g. Table 1 on "causal"; the paper's numbers stay its own)."""
    spec = get_spec(number)
    if lm is not None:
        from vlbench.backbones import BACKBONES

        families = sorted({b.lm_type for b in BACKBONES.values()})
        if lm not in families:
            raise UserError(f"--lm: unknown language model '{lm}' (choose from {', '.join(families)})")
    if lm is not None and lm != spec.lm:
        spec = dataclasses.replace(spec, lm=lm, title=f"{spec.title} rows on --lm {lm}", sweep_hint=f"{spec.sweep_hint} --lm {lm}")
    groups = row_groups(store, spec, sweep, profile, include_superseded)
    if not groups:
        where = " ".join(f"--{k} {v}" for k, v in (("sweep", sweep), ("profile", profile)) if v)
        raise UserError(
            f"no finished runs for table {number} ({spec.title}){' with ' + where if where else ''}; "
            f"run `{spec.sweep_hint}` first"
        )
    scores = store.test_scores(sweep=sweep, profile=profile, suite=spec.suite, include_superseded=include_superseded)
    scores = scores[scores["name"] == "score"]
    per_run = {rid: dict(zip(g["task"], g["value"] * 100)) for rid, g in scores.groupby("run_id")}

    rows = [summarise(spec, group, per_run, cost) for group in groups]
    disambiguate(rows, groups)
    if compare_paper:
        add_paper_columns(spec, rows)
    rows.sort(key=lambda row: row.pop("_order"))

    score_keys = [*spec.tasks, "avg"] if len(spec.tasks) > 1 else list(spec.tasks)
    columns = [("method", "Method"), ("hidden_dim", "d"), ("params_percent", "Params %")]
    if compare_paper:
        columns.append(("params_percent_paper", "paper"))
    for key in score_keys:
        columns.append((key, TASK_HEADERS.get(key, "Avg.")))
        if compare_paper:
            columns += [(f"{key}_paper", "paper"), (f"{key}_diff", "Δ")]
    columns.append(("seeds", "seeds"))
    if cost:  # reserved memory is CUDA's: no column for runs on CPU only
        reserved = any(row.get("peak_reserved_mb") is not None for row in rows)
        columns += [(k, h) for k, h in COST_COLUMNS.items() if k != "peak_reserved_mb" or reserved]

    notes = ["Test split, x100 (accuracy %, CIDEr x100); mean ± sample std over seeds where seeds > 1."]
    profiles = sorted({r.profile for group in groups for r in group})
    if compare_paper:
        notes.append(
            f"paper: VL-Adapter (CVPR 2022) Table {number}, on the real datasets; these runs: profile "
            f"{', '.join(profiles)}" + (" (synthetic data and tiny models: compare trends, not values)" if "tiny" in profiles else "")
        )
    return ReportTable(spec, rows, columns, score_keys, notes)


def row_groups(
    store: Store, spec: TableSpec, sweep: str | None = None, profile: str | None = None, include_superseded: bool = False
) -> list[list[RunRecord]]:
    """The finished runs of the table's rows, one list per row: the seeds of one config together
    (superseded runs only with those of the same fingerprint)."""
    statuses = ("done", "superseded") if include_superseded else ("done",)
    groups: dict[tuple, list[RunRecord]] = {}
    for status in statuses:
        for r in store.runs(sweep=sweep, status=status, profile=profile, suite=spec.suite):
            if belongs(r, spec):
                generation = json.dumps(r.fingerprint, sort_keys=True) if r.status == "superseded" else ""
                groups.setdefault((config_without_seed(r), generation), []).append(r)
    return list(groups.values())


def belongs(run: RunRecord, spec: TableSpec) -> bool:
    from vlbench.backbones import BACKBONES

    backbone = BACKBONES.get(run.config["backbone"])
    return (
        backbone is not None
        and backbone.lm_type == spec.lm
        and tuple(run.config["tasks"]) == spec.tasks
        and spec.shows(run.method, run.sharing)
    )


def config_without_seed(run: RunRecord) -> str:
    return json.dumps({k: v for k, v in run.config.items() if k != "seed"}, sort_keys=True)


def summarise(spec: TableSpec, runs: list[RunRecord], per_run: dict, cost: bool) -> dict:
    first = runs[0]
    options = first.config.get("method_options", {})
    row = {
        "method": spec.label(first.method, first.sharing, options) + superseded_mark(runs),
        "hidden_dim": first.hidden_dim,
        "params_percent": round(first.percent, 2) if first.percent is not None else None,
        "seeds": len(runs),
    }
    per_seed = [per_run.get(r.id, {}) for r in runs]
    averages = [sum(s[t] for t in spec.tasks) / len(spec.tasks) for s in per_seed if all(t in s for t in spec.tasks)]
    for task in spec.tasks:
        row[task], row[f"{task}_std"] = mean_std([s[task] for s in per_seed if task in s])
    if len(spec.tasks) > 1:
        row["avg"], row["avg_std"] = mean_std(averages) if len(averages) == len(runs) else (None, None)
    if cost:
        row["train_seconds"] = mean_or_none([r.train_seconds for r in runs], 1)
        row["samples_per_second"] = mean_or_none([r.samples_per_second for r in runs], 1)
        row["peak_memory_mb"] = mean_or_none([r.peak_memory_mb for r in runs], 0)
        row["peak_reserved_mb"] = mean_or_none([r.peak_reserved_mb for r in runs], 0)
        row["checkpoint_mb"] = mean_or_none([r.checkpoint_bytes and r.checkpoint_bytes / 2**20 for r in runs], 3)
    row["group"] = group_of(first.method)
    row["_key"] = paper_identity(first.method, first.sharing, options)
    row["_order"] = order_key(spec, first.method, first.sharing, options, first.hidden_dim)
    return row


def superseded_mark(runs: list[RunRecord]) -> str:
    """' (superseded MM-DD HH:MM)' for a group of superseded runs (the first was superseded then), else ''."""
    when = min((r.superseded_at for r in runs if r.status == "superseded"), default=None)
    return f" (superseded {when:%m-%d %H:%M})" if when else ""


def paper_identity(method: str, sharing: str | None, options: dict) -> tuple:
    """What pairs a row with the paper's: method, sharing and the options that tell paper rows apart."""
    return method, sharing, tuple(sorted((k, v) for k, v in options.items() if k in PAPER_ROW_OPTIONS and v))


def group_of(method: str) -> str:
    """The paper bolds the best score separately with and without parameter-efficient training; the
    methods beyond the paper are a group of their own, so the paper's rows keep the paper's bold."""
    if method in REFERENCE_METHODS:
        return "reference"
    if method in BEYOND_PAPER_METHODS:
        return "beyond"
    return "full" if method == "full" else "efficient"


def order_key(spec: TableSpec, method: str, sharing: str | None, options: dict, hidden_dim) -> tuple:
    paper_order = [(p.method, p.sharing, p.options) for p in spec.paper]
    key = paper_identity(method, sharing, options)
    general = list(ROW_LABELS)
    return (
        paper_order.index(key) if key in paper_order else len(paper_order),
        general.index((method, sharing)) if (method, sharing) in general else len(general),
        method,
        sharing or "",
        hidden_dim or 0,
    )


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = round(statistics.stdev(values), 2) if len(values) > 1 else None
    return round(statistics.fmean(values), 2), std


def mean_or_none(values: list, digits: int) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), digits) if values else None


def disambiguate(rows: list[dict], groups: list[list[RunRecord]]) -> None:
    """Rows that would read the same (label and hidden dim) get the settings that tell them apart."""
    by_name: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        by_name.setdefault((row["method"], row["hidden_dim"]), []).append(i)
    for indices in by_name.values():
        if len(indices) < 2:
            continue
        flat = [flatten({k: v for k, v in groups[i][0].config.items() if k != "seed"}) for i in indices]
        differing = sorted(k for k in set().union(*flat) if len({json.dumps(f.get(k)) for f in flat}) > 1)
        for i, f in zip(indices, flat):
            rows[i]["method"] += " [" + ", ".join(f"{k.split('.')[-1]}={f.get(k)}" for k in differing) + "]"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def add_paper_columns(spec: TableSpec, rows: list[dict]) -> None:
    """Each row beside the paper's row for the same method (and options); paper rows we lack, empty."""
    matched = set()
    for row in rows:
        paper = next((p for p in spec.paper if (p.method, p.sharing, p.options) == row["_key"]), None)
        fill_paper(spec, row, paper)
        if paper is not None:
            matched.add(paper.label)
    for paper in spec.paper:
        if paper.label in matched:
            continue
        options = dict(paper.options)
        row = {"method": spec.label(paper.method, paper.sharing, options), "hidden_dim": paper.hidden_dim}
        row |= {"params_percent": None, "seeds": 0, "group": group_of(paper.method)}
        row["_order"] = order_key(spec, paper.method, paper.sharing, options, paper.hidden_dim)
        for task in spec.tasks:
            row[task] = row[f"{task}_std"] = None
        if len(spec.tasks) > 1:
            row["avg"] = row["avg_std"] = None
        fill_paper(spec, row, paper)
        rows.append(row)


def fill_paper(spec: TableSpec, row: dict, paper: PaperRow | None) -> None:
    row["params_percent_paper"] = paper.params_percent if paper else None
    published = {**paper.scores, "avg": paper.avg} if paper else {}
    for key in [*spec.tasks, "avg"] if len(spec.tasks) > 1 else spec.tasks:
        ours, theirs = row.get(key), published.get(key)
        row[f"{key}_paper"] = theirs
        row[f"{key}_diff"] = round(ours - theirs, 2) if ours is not None and theirs is not None else None


# ---- rendering -----------------------------------------------------------------------------


def render(table: ReportTable, fmt: str) -> str:
    if fmt == "json":
        return json.dumps([public(row) for row in table.rows], indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return pd.DataFrame([public(row) for row in table.rows]).to_csv(index=False)
    if fmt == "markdown":
        return render_markdown(table)
    if fmt == "latex":
        return render_latex(table)
    if fmt == "html":
        return render_html(table)
    raise UserError(f"--format: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def public(row: dict) -> dict:
    return {k: none_if_nan(v) for k, v in row.items() if not k.startswith("_")}


def best_cells(table: ReportTable) -> set[tuple[int, str]]:
    """(row index, column) of the highest score per column within each group, ties included."""
    best = set()
    for group in ("full", "efficient", "beyond"):
        members = [i for i, row in enumerate(table.rows) if row["group"] == group]
        for key in table.score_keys:
            values = [table.rows[i][key] for i in members if table.rows[i].get(key) is not None]
            best |= {(i, key) for i in members if values and table.rows[i].get(key) == max(values)}
    return best


def cells(table: ReportTable) -> list[list[tuple[str, bool]]]:
    """Each shown cell as (text, bold)."""
    best = best_cells(table)
    out = []
    for i, row in enumerate(table.rows):
        line = []
        for key, _ in table.columns:
            text = fmt_value(row.get(key), signed=key.endswith("_diff"))
            if key in table.score_keys and row.get(f"{key}_std") is not None:
                text += f" ± {row[f'{key}_std']:.2f}"
            line.append((text, (i, key) in best))
        out.append(line)
    return out


def fmt_value(value, signed: bool = False) -> str:
    value = none_if_nan(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.2f}" if signed else f"{value:.2f}"
    return str(value)


def none_if_nan(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def markdown(table: pd.DataFrame) -> str:
    """A plain markdown table of a DataFrame (used by `vlbench params`)."""
    headers = list(table.columns)
    body = [[fmt_value(record[h]) for h in headers] for record in table.to_dict(orient="records")]
    return markdown_lines(headers, body)


def markdown_lines(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def render_markdown(table: ReportTable) -> str:
    body = [[f"**{text}**" if bold else text for text, bold in line] for line in cells(table)]
    title = f"Table {table.spec.number}. {table.spec.title}\n\n"
    return title + markdown_lines([h for _, h in table.columns], body) + "".join(f"\n{n}\n" for n in table.notes)


LATEX_REPLACEMENTS = {"θV→L": r"$\theta_{V\to L}$", "±": r"$\pm$", "Δ": r"$\Delta$", "%": r"\%", "&": r"\&", "_": r"\_"}


def latex_text(text: str) -> str:
    for plain, tex in LATEX_REPLACEMENTS.items():
        text = text.replace(plain, tex)
    return text


def render_latex(table: ReportTable) -> str:
    """A booktabs table; a rule between groups, the best score of each group in bold (as the paper)."""
    align = "l" + "r" * (len(table.columns) - 1)
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_text(h) for _, h in table.columns) + r" \\",
        r"\midrule",
    ]
    previous = None
    for row, line in zip(table.rows, cells(table)):
        if previous is not None and row["group"] != previous:
            lines.append(r"\midrule")
        previous = row["group"]
        lines.append(" & ".join(rf"\textbf{{{latex_text(t)}}}" if b else latex_text(t) for t, b in line) + r" \\")
    caption = f"Table {table.spec.number}: {table.spec.title}. " + " ".join(table.notes)
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_text(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_html(table: ReportTable) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in table.columns)
    body = []
    for row, line in zip(table.rows, cells(table)):
        tds = "".join(f"<td><b>{html.escape(t)}</b></td>" if b else f"<td>{html.escape(t)}</td>" for t, b in line)
        body.append(f'<tr class="{row["group"]}">{tds}</tr>')
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in table.notes)
    return (
        f"<table>\n<caption>Table {table.spec.number}. {html.escape(table.spec.title)}</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + f"\n</tbody>\n</table>\n{notes}\n"
    )


def rich_table(table: ReportTable):
    """The terminal rendering of the markdown format."""
    from rich.markup import escape
    from rich.table import Table

    out = Table(title=f"Table {table.spec.number}. {table.spec.title}", caption=" ".join(table.notes))
    for i, (_, header) in enumerate(table.columns):
        out.add_column(header, justify="left" if i == 0 else "right")
    previous = None
    for row, line in zip(table.rows, cells(table)):
        if previous is not None and row["group"] != previous:
            out.add_section()
        previous = row["group"]
        out.add_row(*(f"[bold]{escape(t)}[/bold]" if b else escape(t) for t, b in line))
    return out


def write_report(text: str, reports_dir: Path, name: str, fmt: str) -> Path:
    return atomic_write(Path(reports_dir) / f"{name}.{FORMATS[fmt]}", lambda tmp: tmp.write_text(text))
