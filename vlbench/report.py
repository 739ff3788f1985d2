"""Paper-style tables from the store (it reads nothing else)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from vlbench.config import IMAGE_TEXT_TASKS, UserError
from vlbench.store import Store

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
    ("text-only", None): "Text-only prior (no image)",
}
FORMATS = ("markdown", "csv", "json")


def row_label(method: str, sharing: str | None) -> str:
    return ROW_LABELS.get((method, sharing), f"{method} ({sharing})" if sharing else method)


def table1(store: Store, sweep: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """One row per (method, sharing, hidden dim): test scores x100 averaged over seeds, and the avg."""
    scores = store.test_scores(sweep=sweep, profile=profile, suite="image-text")
    scores = scores[scores["name"] == "score"]
    if scores.empty:
        where = f" in sweep '{sweep}'" if sweep else ""
        raise UserError(f"no finished image-text runs{where}; run `vlbench sweep image-text` first")
    scores = scores.assign(sharing=scores["sharing"].where(scores["sharing"].notna(), None))
    rows = []
    order = list(ROW_LABELS)
    for (method, sharing, hidden_dim), group in scores.groupby(
        ["method", "sharing", "hidden_dim"], dropna=False, sort=False
    ):
        sharing = None if pd.isna(sharing) else sharing
        hidden_dim = None if pd.isna(hidden_dim) else int(hidden_dim)
        per_task = group.groupby("task")["value"].mean() * 100
        row = {
            "method": row_label(method, sharing),
            "hidden_dim": hidden_dim,
            "params_percent": round(float(group["percent"].mean()), 2) if group["percent"].notna().any() else None,
            "seeds": int(group["seed"].nunique()),
        }
        for task in IMAGE_TEXT_TASKS:
            row[task] = round(float(per_task[task]), 2) if task in per_task else None
        task_scores = [row[t] for t in IMAGE_TEXT_TASKS]
        row["avg"] = round(sum(task_scores) / len(task_scores), 2) if None not in task_scores else None
        key = (method, sharing)
        row["_order"] = (order.index(key) if key in order else len(order), hidden_dim or 0)
        rows.append(row)
    # object dtype keeps hidden dims as ints and missing scores as None (not NaN floats)
    return pd.DataFrame(rows, dtype=object).sort_values("_order").drop(columns="_order").reset_index(drop=True)


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "json":
        records = table.to_dict(orient="records")
        return json.dumps([{k: none_if_nan(v) for k, v in r.items()} for r in records], indent=2)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return markdown(table)
    raise UserError(f"--format: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def markdown(table: pd.DataFrame) -> str:
    headers = list(table.columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for record in table.to_dict(orient="records"):
        lines.append("| " + " | ".join(fmt_cell(record[h]) for h in headers) + " |")
    return "\n".join(lines) + "\n"


def fmt_cell(value) -> str:
    value = none_if_nan(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def none_if_nan(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(text: str, reports_dir: Path, name: str, fmt: str) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{name}.{ {'markdown': 'md', 'csv': 'csv', 'json': 'json'}[fmt] }"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
