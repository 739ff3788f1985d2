"""`vlbench dashboard`: a local web app over the results store, read-only (Dash, Plotly's framework).

Pages (a navigation bar links them; each is a URL):

    /           the runs: filter by sweep, method, state and seed, sort by any column, each failure's error
    /progress   the running runs: epoch, step, ETA and heartbeat, refreshed every `refresh_s` seconds
    /tables     Tables 1-5 (`vlbench report`), with the --compare-paper and --cost toggles
    /tradeoff   Figure 4: score vs updated params % or peak training memory, one trace per method family,
                each point's config on hover, the Pareto frontier; a click lists the point's runs
    /curves     training curves (loss, lr, samples/s per step; validation scores per epoch) of selected runs
    /run/KEY    one run: resolved config, provenance, parameter breakdown by component, costs, metrics

The pages only assemble what the library computes: `Store.runs`, `Store.curves`, `Store.val_history` and
`Store.run_documents` (vlbench.store), `describe` (vlbench.live: state, progress and ETA as `vlbench
status` shows them), `build_table` and `cells` (vlbench.report), `tradeoff_data` with its Pareto
frontier, the family colours and markers (vlbench.plot). There is no SQL here.

Nothing writes: the store is opened with `Store(url, read_only=True)` (SQLite's read-only mode, a
read-only PostgreSQL session, no schema creation or upgrade). A database that cannot be opened
(unreachable, missing, empty, another schema version) is a page saying why, and is tried again at
the next page load.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote

import dash
import dash_ag_grid as dag
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from vlbench.baselines import is_baseline
from vlbench.config import UserError
from vlbench.live import describe
from vlbench.plot import (
    CURVE_METRICS, FAMILY_COLORS, METHOD_STYLES, SHARING_STYLES, TASK_CHOICES, X_AXES, score_label, tradeoff_data,
)  # fmt: skip
from vlbench.report import TABLES, TASK_HEADERS, build_table, cells, disambiguate, row_groups
from vlbench.store import COST_KEYS, RunRecord, Store

LOOPBACK = ("127.0.0.1", "localhost", "::1")
FAMILY_NAMES = {
    "full": "Full fine-tuning", "adapter": "Adapters", "compacter": "Compacters", "hyperformer": "Hyperformer",
    "lora": "LoRA", "prompt": "Prompts", "lst": "Ladder Side-Tuning", "bitfit": "BitFit", "peft": "PEFT",
}  # fmt: skip
# matplotlib's markers and line styles (vlbench.plot's) as plotly names them
SYMBOLS = {"o": "circle", "^": "triangle-up", "s": "square", "D": "diamond", "X": "x", "P": "cross", "*": "star"}
DASHES = {"-": "solid", "--": "dash", "-.": "dashdot", ":": "dot", "": "solid"}
CURVE_RUN_STATUSES = ("done", "running", "interrupted")  # the runs whose curves `vlbench plot curves` draws
STYLE = """
body { font-family: "Liberation Sans", Arial, sans-serif; margin: 0; color: #222; }
nav { background: #1f3b57; padding: 8px 16px; display: flex; gap: 18px; align-items: baseline; flex-wrap: wrap; }
nav a { color: #fff; text-decoration: none; font-weight: bold; }
nav .db { color: #c8d6e5; font-size: 12px; margin-left: auto; }
main { padding: 12px 18px; }
.controls { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-end; margin-bottom: 10px; }
.controls > div { min-width: 180px; }
.controls label.title { display: block; font-size: 12px; color: #555; margin-bottom: 2px; }
.problem { border: 1px solid #d9534f; background: #fdf2f2; padding: 10px 14px; border-radius: 4px; max-width: 60em; }
.problem h2 { margin-top: 0; color: #a94442; font-size: 18px; }
.note { color: #555; font-size: 13px; }
table.paper { border-collapse: collapse; font-size: 13px; }
table.paper th, table.paper td { padding: 3px 9px; text-align: right; border-bottom: 1px solid #eee; }
table.paper th:first-child, table.paper td:first-child { text-align: left; }
table.paper tr.group-start td { border-top: 2px solid #888; }
table.kv { border-collapse: collapse; font-size: 13px; margin-bottom: 12px; }
table.kv th { text-align: left; padding: 2px 12px 2px 0; color: #555; vertical-align: top; white-space: nowrap; }
table.kv td { padding: 2px 0; text-align: left; }
table.kv td.num { text-align: right; padding-left: 12px; }
pre.config { background: #f6f8fa; padding: 8px; font-size: 12px; max-height: 420px; overflow: auto; }
.error-text { color: #a94442; white-space: pre-wrap; }
.state-failed { color: #c9302c; font-weight: bold; } .state-running { color: #137a9c; font-weight: bold; }
.state-stale { color: #a3379b; font-weight: bold; } .state-done { color: #2d862d; }
.grid2 { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(300px, 1fr); gap: 18px; }
"""


def host_warning(host: str) -> str | None:
    """What `--host` exposes: None on a loopback address."""
    if host in LOOPBACK or host.startswith("127."):
        return None
    return (
        f"--host {host}: the dashboard is reachable from the network, not only from this machine; anyone who can "
        "connect to it can read the results store (configs, metrics, host names, paths, errors): it has no login"
    )


class StoreHandle:
    """The store, opened read-only on first use; a failed open (database missing, empty, unreachable, of
    another schema version) is tried again at the next request, so the dashboard recovers once it can."""

    def __init__(self, url: str):
        self.url = url
        self._store: Store | None = None
        self._lock = threading.Lock()

    def get(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = Store(self.url, read_only=True)
            return self._store

    @property
    def shown(self) -> str:
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - a malformed URL: the open will say what is wrong with it
            return self.url


# ---- data for the pages (plain rows and figures: tested without a browser) ------------------------


def _time(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


def run_link(run: RunRecord) -> str:
    return f"/run/{quote(run.key, safe='')}"


def run_rows(store: Store, runs: list[RunRecord]) -> list[dict]:
    """The runs table: one row per run, with its test scores (x100, as `vlbench report`)."""
    scores = store.test_scores(include_superseded=True)
    scores = scores[scores["name"] == "score"]
    per_run = {rid: dict(zip(g["task"], g["value"] * 100)) for rid, g in scores.groupby("run_id")}
    rows = []
    for r in runs:
        state, where, eta = describe(r)
        row = {
            "id": r.id, "key": r.key, "run": f"[{r.label}]({run_link(r)})", "label": r.label, "sweep": r.sweep,
            "method": r.method, "sharing": r.sharing, "hidden_dim": r.hidden_dim, "seed": r.seed, "state": state,
            "progress": (where + (f", ETA {eta}" if eta != "-" else "")) if state in ("running", "stale") else None,
            "params_percent": round(r.percent, 3) if r.percent is not None else None,
            "train_seconds": round(r.train_seconds, 1) if r.train_seconds is not None else None,
            "peak_memory_mb": round(r.peak_memory_mb, 1) if r.peak_memory_mb is not None else None,
            "started": _time(r.started_at), "finished": _time(r.finished_at),
            "error": r.error or (r.superseded_reason if r.status == "superseded" else None),
            "profile": r.profile, "suite": r.suite,
        }  # fmt: skip
        row["detail"] = row["progress"] or row["error"]  # one column, as `vlbench status` has it
        for task, value in per_run.get(r.id, {}).items():
            row[f"score_{task}"] = round(value, 2)
        rows.append(row)
    return rows


def filter_rows(rows: list[dict], sweeps=None, methods=None, states=None, seeds=None) -> list[dict]:
    """The rows matching every filter given (a filter is a list of accepted values; empty: no filter)."""
    wanted = {"sweep": sweeps, "method": methods, "state": states, "seed": seeds}
    return [row for row in rows if all(not values or row[k] in values for k, values in wanted.items())]


def progress_rows(runs: list[RunRecord], now: datetime | None = None) -> list[dict]:
    """The live view's rows: every running (or stale) run's epoch, step, ETA and heartbeat."""
    now = now or datetime.now(timezone.utc)
    rows = []
    for r in runs:
        if r.status != "running":
            continue
        state, where, eta = describe(r)
        p = r.progress or {}
        beat = r.heartbeat_at or r.started_at
        rows.append({
            "run": r.label, "link": run_link(r), "sweep": r.sweep, "state": state, "where": where or "starting",
            "phase": p.get("phase"), "epoch": p["epoch"] + 1 if "epoch" in p else None, "step": p.get("step"),
            "total_steps": p.get("total_steps"), "eta": eta,
            "fraction": p["step"] / p["total_steps"] if p.get("total_steps") and "step" in p else None,
            "heartbeat_s": (now - beat).total_seconds() if beat else None, "host": r.host, "device": r.device,
            "slurm_job_id": r.slurm_job_id,
        })  # fmt: skip
    return rows


def table1_groups(store: Store, sweep: str | None = None, profile: str | None = None) -> dict[tuple, list[RunRecord]]:
    """Table 1's rows as their runs: (row label, hidden dim) -> the seeds of that config, labelled as
    build_table labels them (the same grouping, and the same disambiguation of rows that read alike)."""
    spec = TABLES[1]
    ordered = row_groups(store, spec, sweep=sweep, profile=profile)
    rows = [{"method": spec.label(g[0].method, g[0].sharing, g[0].config.get("method_options", {})),
             "hidden_dim": g[0].hidden_dim} for g in ordered]  # fmt: skip
    disambiguate(rows, ordered)
    return {(row["method"], row["hidden_dim"]): g for row, g in zip(rows, ordered)}


def config_summary(runs: list[RunRecord]) -> str:
    """The settings of a table row's config that a reader compares (the full config is on the run's page)."""
    c = runs[0].config
    optim, data = c.get("optim", {}), c.get("data", {})
    parts = [
        f"method {c.get('method')}" + (f" ({c['sharing']})" if c.get("sharing") else ""),
        f"hidden dim {c.get('hidden_dim')}" if c.get("hidden_dim") is not None else None,
        "options " + ", ".join(f"{k}={v}" for k, v in c["method_options"].items()) if c.get("method_options") else None,
        f"lr {optim.get('lr')}, {optim.get('epochs')} epochs, batch {optim.get('batch_size')}, "
        f"{optim.get('precision', 'fp32')}",
        f"backbone {c.get('backbone')}, profile {c.get('profile')}, data {data.get('source')}",
        "runs " + ", ".join(r.label for r in runs),
    ]  # fmt: skip
    return "<br>".join(p for p in parts if p)


def tradeoff_figure(
    store: Store, task: str = "avg", x: str = "params", log_x: bool = False, sweep: str | None = None
) -> go.Figure:
    """Figure 4 from `plot.tradeoff_data`: one trace per method family (its sharing modes are the
    marker shapes, each mode's points joined by a line of its own), the references as horizontal lines,
    the Pareto frontier; hovering a point shows its config, and each point carries its run keys."""
    data = tradeoff_data(store, task, sweep=sweep, x=x)
    groups = table1_groups(store, sweep=sweep)
    column, x_label, title, _ = X_AXES[x]
    fig = go.Figure()
    if data.frontier:
        fx, fy = zip(*data.frontier)
        fig.add_trace(go.Scatter(
            x=fx, y=fy, mode="lines+markers", line_shape="hv", name="Pareto frontier", hoverinfo="skip",
            line={"color": "rgba(160,160,160,0.45)", "width": 9}, meta={"kind": "frontier"},
            marker={"symbol": "circle-open", "size": 17, "color": "#444", "line": {"width": 1.5}},
        ))  # fmt: skip
    families: dict[str, list] = {}
    for s in data.series:
        families.setdefault(s.method, []).append(s)
    for family, series in families.items():
        points = []  # (x, y, std, marker symbol, label, hover text, run keys); None x and y: a gap
        for s in series:
            marker, _ = METHOD_STYLES.get(s.method) or SHARING_STYLES.get(s.sharing, SHARING_STYLES[None])
            for px, py, std, d in s.points:
                runs = groups.get((s.label, d), [])
                x_text = f"{px:.2f} %" if x == "params" else f"{px:.0f} MB"
                score = f"{py:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                hover = (f"<b>{s.label}</b>" + (f" d={d}" if d is not None else "") + f"<br>{x_label}: {x_text}"
                         f"<br>{score_label(task)}: {score}" + (f"<br>{config_summary(runs)}" if runs else ""))  # fmt: skip
                points.append((px, py, std or 0.0, SYMBOLS.get(marker, "circle"), "" if d is None else str(d), hover,
                               [r.key for r in runs]))  # fmt: skip
            # a gap between sharing modes: each mode is its own line within the family's trace
            points.append((None, None, None, "circle", "", "", []))
        xs, ys, errs, symbols, labels, hover, keys = (list(column) for column in zip(*points))
        color = FAMILY_COLORS.get(family, "#7f7f7f")
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers+text", name=FAMILY_NAMES.get(family, family), legendgroup=family,
            meta={"kind": "family", "family": family}, connectgaps=False, text=labels, textposition="top right",
            textfont={"size": 10, "color": "#333"}, hovertext=hover, hoverinfo="text", customdata=keys,
            marker={"symbol": symbols, "size": 10, "color": color}, line={"color": color, "width": 1.6},
            error_y={"type": "data", "array": errs, "visible": any(e for e in errs if e), "color": color},
        ))  # fmt: skip
    for name, score in data.references.items():
        full = name.startswith("Full fine-tuning")
        fig.add_hline(y=score, line={"color": "black" if full else "#7f7f7f", "dash": "solid" if full else "dot",
                                     "width": 1.2},
                      annotation_text=f"{name} ({score:.1f})", annotation_position="top left")  # fmt: skip
    subtitle = "numbers: hidden dim (bottleneck / rank); markers: sharing, ● multiple, ▲ half, ■ single"
    fig.update_layout(
        title={"text": title, "subtitle": {"text": subtitle}}, template="plotly_white", height=540,
        margin={"l": 60, "r": 20, "t": 80, "b": 60}, xaxis={"title": x_label, "type": "log" if log_x else "linear"},
        yaxis={"title": score_label(task)}, legend={"title": "method family"}, hoverlabel={"align": "left"},
        hovermode="closest",
    )  # fmt: skip
    return fig


def curve_runs(store: Store) -> list[RunRecord]:
    """The runs a curve can be drawn for: done, running or interrupted, not the text-only prior."""
    runs = [r for status in CURVE_RUN_STATUSES for r in store.runs(status=status)]
    return sorted((r for r in runs if not is_baseline(r.method)), key=lambda r: r.id)


def curves_figure(store: Store, runs: list[RunRecord], metric: str = "loss") -> go.Figure:
    """One line per run: the training curve per optimizer step (loss, lr, samples/s) or the validation
    score per epoch, coloured by method family as in `vlbench plot curves`."""
    if metric not in CURVE_METRICS:
        raise UserError(f"unknown metric '{metric}' (choose from {', '.join(CURVE_METRICS)})")
    label, source = CURVE_METRICS[metric]
    fig = go.Figure()
    points = store.curves([r.id for r in runs]) if source == "curve" else None
    for r in runs:
        if source == "curve":
            g = points[(points["run_id"] == r.id) & (points["name"] == metric)]
            xs, ys = list(g["step"]), list(g["value"])
        else:
            h = store.val_history(r.id)
            h = h[(h["task"] == metric) & (h["name"] == "score")]
            xs, ys = list(h["epoch"] + 1), list(h["value"] * 100)
        if not xs:
            continue
        _, line = METHOD_STYLES.get(r.method) or SHARING_STYLES.get(r.sharing, SHARING_STYLES[None])
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers" if len(xs) < 30 else "lines", name=f"{r.label} ({r.sweep})",
            line={"color": FAMILY_COLORS.get(r.method, "#7f7f7f"), "dash": DASHES.get(line, "solid")},
            meta={"run": r.key}, hovertemplate=f"{r.label}<br>%{{x}}: %{{y:.4g}}<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(
        template="plotly_white", height=480, margin={"l": 60, "r": 20, "t": 30, "b": 50},
        xaxis={"title": "Optimizer step" if source == "curve" else "Epoch"}, yaxis={"title": label},
    )  # fmt: skip
    return fig


# ---- page pieces ----------------------------------------------------------------------------------


def problem(message: str, title: str = "The results database cannot be shown") -> html.Div:
    return html.Div(className="problem", children=[
        html.H2(title), html.P(message),
        html.P("The dashboard only reads the database; it tries again when a page is loaded.", className="note"),
    ])  # fmt: skip


def guarded(render: Callable[..., Any], n_outputs: int = 1) -> Callable[..., Any]:
    """A callback body whose failures show as a message in its first output instead of a server error:
    a UserError (what the library tells a person) as it is, anything else by its one-line reason."""

    def wrapper(*args):
        try:
            return render(*args)
        except UserError as e:
            shown = problem(str(e), "Nothing to show") if str(e).startswith("no ") else problem(str(e))
        except Exception as e:  # noqa: BLE001 - e.g. the database went away while the dashboard ran
            detail = str(getattr(e, "orig", None) or e).strip().splitlines()
            shown = problem(f"{type(e).__name__}: {detail[0] if detail else ''}", "The database could not be read")
        return shown if n_outputs == 1 else (shown, *[dash.no_update] * (n_outputs - 1))

    wrapper.__name__ = render.__name__
    return wrapper


def control(title: str, component) -> html.Div:
    return html.Div([html.Label(title, className="title"), component])


def options(values) -> list[dict]:
    return [{"label": str(v), "value": v} for v in values]


def kv_table(pairs: list[tuple[str, Any]]) -> html.Table:
    body = []
    for k, v in pairs:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        body.append(html.Tr([html.Th(k), html.Td("-" if v is None or v == "" else str(v))]))
    return html.Table(className="kv", children=html.Tbody(body))


RUN_COLUMNS = [
    {"field": "run", "headerName": "run", "cellRenderer": "markdown", "pinned": "left", "minWidth": 190},
    {"field": "sweep"}, {"field": "method"}, {"field": "sharing"}, {"field": "hidden_dim", "headerName": "d"},
    {"field": "seed"}, {"field": "state", "cellClassRules": {
        "state-failed": "params.value == 'failed'", "state-running": "params.value == 'running'",
        "state-stale": "params.value == 'stale'", "state-done": "params.value == 'done'"}},
    {"field": "detail", "headerName": "progress / error", "minWidth": 240, "maxWidth": 420, "wrapText": True,
     "autoHeight": True, "cellClassRules": {"error-text": "params.data.error != null"}},
    {"field": "params_percent", "headerName": "params %"},
]  # fmt: skip
RUN_TAIL_COLUMNS = [
    {"field": "train_seconds", "headerName": "train s"}, {"field": "peak_memory_mb", "headerName": "peak MB"},
    {"field": "started"}, {"field": "finished"}, {"field": "key"},
]  # fmt: skip


def runs_page(store: Store) -> html.Div:
    runs = store.runs()
    if not runs:
        return problem("no runs yet; start one with `vlbench sweep image-text`", "Nothing to show")
    rows = run_rows(store, runs)
    present = {k[6:] for row in rows for k in row if k.startswith("score_")}
    tasks = [t for t in TASK_HEADERS if t in present] + sorted(present - set(TASK_HEADERS))  # the tables' order
    columns = [*RUN_COLUMNS, *({"field": f"score_{t}", "headerName": TASK_HEADERS.get(t, t)} for t in tasks), *RUN_TAIL_COLUMNS]
    distinct = lambda key: sorted({row[key] for row in rows if row[key] is not None})  # noqa: E731
    return html.Div([
        html.Div(className="controls", children=[
            control("sweep", dcc.Dropdown(id="f-sweep", options=options(distinct("sweep")), multi=True, placeholder="all")),
            control("method", dcc.Dropdown(id="f-method", options=options(distinct("method")), multi=True, placeholder="all")),
            control("state", dcc.Dropdown(id="f-state", options=options(distinct("state")), multi=True, placeholder="all")),
            control("seed", dcc.Dropdown(id="f-seed", options=options(distinct("seed")), multi=True, placeholder="all")),
            html.Div([html.Span(id="runs-count", className="note"), html.Br(),
                      dcc.Link("training curves of the selected runs", id="curves-link", href="/curves")]),
        ]),  # fmt: skip
        dag.AgGrid(
            id="runs-grid", rowData=rows, columnDefs=columns, getRowId="params.data.key",
            defaultColDef={"sortable": True, "filter": True, "resizable": True, "minWidth": 70},
            dashGridOptions={"rowSelection": {"mode": "multiRow"}, "animateRows": False,
                             "tooltipShowDelay": 300, "domLayout": "autoHeight"},
            columnSize="autoSize", style={"width": "100%"},
        ),  # fmt: skip
        html.P("Sort: click a header. Filter: the menus above, or a column's own filter (its header menu). "
               "Tick rows to draw their training curves; a run's name opens its page.", className="note"),
    ])  # fmt: skip


def progress_table(store: Store) -> html.Div:
    runs = store.runs()
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    rows = progress_rows(runs)
    summary = f"{len(runs)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if runs else "no runs yet"
    stamp = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    if not rows:
        body = html.P("No run is running now.", className="note")
    else:
        head = ["run", "sweep", "state", "progress", "", "ETA", "heartbeat", "host", "device", "slurm job"]
        trs = []
        for row in rows:
            bar = ""
            if row["fraction"] is not None:
                bar = html.Progress(value=str(row["fraction"]), max="1", style={"width": "140px"})
            beat = f"{row['heartbeat_s']:.0f} s ago" if row["heartbeat_s"] is not None else "-"
            trs.append(html.Tr(className="progress-row", children=[
                html.Td(dcc.Link(row["run"], href=row["link"])), html.Td(row["sweep"]),
                html.Td(row["state"], className=f"state-{row['state']}"), html.Td(row["where"], className="where"),
                html.Td(bar), html.Td(row["eta"]), html.Td(beat), html.Td(row["host"] or "-"),
                html.Td(row["device"] or "-"), html.Td(row["slurm_job_id"] or "-"),
            ]))  # fmt: skip
        body = html.Table(className="paper", children=[html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(trs)])
    return html.Div([html.P([summary, html.Span(f" (read at {stamp})", className="note")], id="progress-summary"), body])


def progress_page(refresh_s: float) -> html.Div:
    return html.Div([
        html.P(f"Every running run, as its heartbeat reports it (progress every 2 s, heartbeat every minute); "
               f"this page reads the store every {refresh_s:g} s. A run whose owner is gone shows as stale.",
               className="note"),
        dcc.Interval(id="progress-interval", interval=int(refresh_s * 1000)),
        html.Div(id="progress-content"),
    ])  # fmt: skip


def tables_page(store: Store) -> html.Div:
    sweeps = sorted({r.sweep for r in store.runs()})
    return html.Div([
        html.Div(className="controls", children=[
            control("table", dcc.RadioItems(id="t-number", value=1, inline=True,
                                            options=[{"label": f" {n} ", "value": n} for n in TABLES])),
            control("columns", dcc.Checklist(id="t-flags", value=[], inline=True, options=[
                {"label": " the paper's numbers (--compare-paper) ", "value": "compare_paper"},
                {"label": " costs (--cost) ", "value": "cost"},
                {"label": " superseded runs ", "value": "include_superseded"}])),
            control("sweep", dcc.Dropdown(id="t-sweep", options=options(sweeps), placeholder="all sweeps")),
        ]),  # fmt: skip
        html.Div(id="table-content"),
    ])


def paper_table(store: Store, number: int, flags: list[str], sweep: str | None) -> html.Div:
    table = build_table(store, number, sweep=sweep, compare_paper="compare_paper" in flags, cost="cost" in flags,
                        include_superseded="include_superseded" in flags)  # fmt: skip
    trs, previous = [], None
    for row, line in zip(table.rows, cells(table)):
        start = previous is not None and row["group"] != previous
        previous = row["group"]
        tds = [html.Td(html.B(text) if bold else text) for text, bold in line]
        trs.append(html.Tr(tds, className=f"group-{row['group']}" + (" group-start" if start else "")))
    return html.Div([
        html.H3(f"Table {table.spec.number}. {table.spec.title}"),
        html.Table(className="paper", id="paper-table", children=[
            html.Thead(html.Tr([html.Th(h) for _, h in table.columns])), html.Tbody(trs)]),
        *[html.P(note, className="note") for note in table.notes],
        html.P("Bold: the best of each group (full fine-tuning, parameter-efficient, beyond the paper), as the paper.",
               className="note"),
    ])  # fmt: skip


def tradeoff_page(store: Store) -> html.Div:
    sweeps = sorted({r.sweep for r in store.runs()})
    return html.Div([
        html.Div(className="controls", children=[
            control("score", dcc.RadioItems(id="p-task", value="avg", inline=True, options=[
                {"label": f" {TASK_HEADERS.get(t, 'Avg.')} ", "value": t} for t in TASK_CHOICES])),
            control("x axis", dcc.RadioItems(id="p-x", value="params", inline=True, options=[
                {"label": " updated params % ", "value": "params"}, {"label": " peak training memory ", "value": "memory"}])),
            control("scale", dcc.Checklist(id="p-log", value=[], options=[{"label": " log x", "value": "log"}])),
            control("sweep", dcc.Dropdown(id="p-sweep", options=options(sweeps), placeholder="all sweeps")),
        ]),  # fmt: skip
        html.Div(id="tradeoff-content"),
        html.Div(id="tradeoff-clicked", className="note"),
    ])


def curves_page(store: Store, search: str) -> html.Div:
    runs = curve_runs(store)
    chosen = parse_qs((search or "").lstrip("?")).get("runs", [""])[0]
    by_id = {str(r.id): r for r in runs}
    selected = [by_id[i].key for i in chosen.split(",") if i in by_id] or [r.key for r in runs[:10]]
    return html.Div([
        html.Div(className="controls", children=[
            control("quantity", dcc.RadioItems(id="c-metric", value="loss", inline=True,
                                               options=[{"label": f" {m} ", "value": m} for m in CURVE_METRICS])),
            html.Div(style={"minWidth": "420px", "flex": "1"}, children=control("runs", dcc.Dropdown(
                id="c-runs", multi=True, value=selected,
                options=[{"label": f"{r.label} ({r.sweep}, {r.state})", "value": r.key} for r in runs]))),
        ]),  # fmt: skip
        html.Div(id="curves-content"),
    ])


def param_breakdown(params: dict, method: str) -> html.Div:
    """A run's parameter counts by component (the store's breakdown), as a table and a bar chart."""
    comps, total = params["components"], params["total"] or 1

    def line(name: str, trainable: int, count: int, percent: float) -> html.Tr:
        cells = (f"{trainable:,}", f"{count:,}", f"{percent:.3f}")
        return html.Tr([html.Th(name), *(html.Td(text, className="num") for text in cells)])

    trs = [line(name, c["trainable"], c["total"], 100 * c["trainable"] / total) for name, c in comps.items()]
    trs.append(line("all", params["trainable"], params["total"], params["percent"]))
    bar = go.Figure([
        go.Bar(y=list(comps), x=[c["total"] for c in comps.values()], orientation="h", name="all", marker_color="#d0d7de"),
        go.Bar(y=list(comps), x=[c["trainable"] for c in comps.values()], orientation="h", name="trainable",
               marker_color=FAMILY_COLORS.get(method, "#1f77b4")),
    ])  # fmt: skip
    bar.update_layout(barmode="overlay", height=60 + 40 * len(comps), template="plotly_white",
                      margin={"l": 120, "r": 10, "t": 10, "b": 30}, xaxis={"title": "parameters"})  # fmt: skip
    head = html.Thead(html.Tr([html.Th(h) for h in ("component", "trainable", "total", "% of model")]))
    return html.Div([
        html.Table(className="kv", id="param-components", children=[head, html.Tbody(trs)]),
        html.P(params["convention"], className="note"),
        dcc.Graph(id="param-bars", figure=bar, config={"displayModeBar": False}),
    ])


def run_page(store: Store, run: str) -> html.Div:
    """One run (by key, or by its label as `vlbench status` prints it) from its run document
    (`Store.run_documents`: what run.json and `db export` hold)."""
    from vlbench.runs import find_run

    try:
        key = find_run(store, run).key
    except UserError as e:
        return problem(str(e), "Nothing to show")
    records, docs = store.runs(keys=[key]), store.run_documents(keys=[key])
    if not records or not docs:
        return problem(f"no run with key {key} in this database", "Nothing to show")
    r, doc = records[0], docs[0]
    state, where, eta = describe(r)
    run, params = doc["run"], doc["params"]
    facts = [f" · sweep {r.sweep} · key {r.key}"]
    if where and state != "failed":
        facts.append(f" · {where}" + (f" · ETA {eta}" if eta != "-" else ""))
    header = [html.H2(r.label), html.P([html.Span(state, className=f"state-{state}"), *facts])]
    if r.error:
        header.append(html.Div(className="problem", children=[
            html.H2("error" if r.status == "failed" else "reason"), html.Pre(r.error, className="error-text")]))  # fmt: skip
    provenance = kv_table([
        ("host", run["host"]), ("device", run["device"]), ("git commit", run["git_commit"]),
        ("world size", run["world_size"]), ("slurm job", run["slurm_job_id"]), ("run folder", run["run_dir"]),
        ("started", run["started_at"]), ("finished", run["finished_at"]), ("heartbeat", run["heartbeat_at"]),
        ("owner", run["owner"]), ("fingerprint", run["fingerprint"]), ("resumed from", run["resumed_from"]),
        ("re-scored", run["rescored"]), ("superseded", run["superseded_reason"]), ("versions", run["versions"]),
        ("sweep command", doc["sweep"]["command"]),
    ])  # fmt: skip
    fingerprint = kv_table(sorted((run.get("fingerprint_parts") or {}).items()))
    costs = kv_table([(k.replace("_", " "), run[k]) for k in COST_KEYS])
    if params is None:
        param_part = html.P("no parameter counts recorded (yet)", className="note")
    else:
        param_part = param_breakdown(params, r.method)
    test = [m for m in doc["metrics"] if m["split"] == "test"]
    if test:
        metrics = kv_table([(f"{m['task']} {m['name']}", f"{m['value']:.4f}") for m in test])
    else:
        metrics = html.P("no test metrics (yet)", className="note")
    config = json.dumps(run["config"], indent=2, sort_keys=True)
    return html.Div([
        *header,
        html.Div(className="grid2", children=[
            html.Div([html.H3("Parameters by component"), param_part, html.H3("Costs"), costs,
                      html.H3("Test metrics"), metrics]),
            html.Div([html.H3("Provenance"), provenance, html.H3("Fingerprint"), fingerprint]),
        ]),
        html.H3("Resolved config"), html.Pre(config, className="config", id="run-config"),
        dcc.Link("training curves of this run", href=f"/curves?runs={r.id}"),
    ])  # fmt: skip


# ---- the app --------------------------------------------------------------------------------------

PAGES = {"/": "Runs", "/progress": "Progress", "/tables": "Tables", "/tradeoff": "Trade-off", "/curves": "Curves"}


def create_app(url: str, refresh_s: float = 2.0) -> dash.Dash:
    """The Dash app over the store at `url`, opened read-only on first use."""
    handle = StoreHandle(url)
    app = dash.Dash(__name__, title="vlbench dashboard", suppress_callback_exceptions=True, update_title=None)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + STYLE + "</style>")
    app.layout = html.Div([
        dcc.Location(id="url"),
        html.Nav([*(dcc.Link(name, href=path) for path, name in PAGES.items()),
                  html.Span(f"{handle.shown} · read-only", className="db")]),
        html.Main(id="page"),
    ])  # fmt: skip

    def store() -> Store:
        return handle.get()

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    @guarded
    def route(path, search):
        path = path or "/"
        if path.startswith("/run/"):
            return run_page(store(), unquote(path[len("/run/"):]))
        if path == "/":
            return runs_page(store())
        if path == "/progress":
            store()  # a database that cannot be opened is said once, for the whole page
            return progress_page(refresh_s)
        if path == "/tables":
            return tables_page(store())
        if path == "/tradeoff":
            return tradeoff_page(store())
        if path == "/curves":
            return curves_page(store(), search)
        return problem(f"no page {path}; the pages are {', '.join(PAGES)} and /run/KEY", "Not found")

    filters = [Input(f"f-{name}", "value") for name in ("sweep", "method", "state", "seed")]

    @app.callback(Output("runs-grid", "rowData"), Output("runs-count", "children"), *filters)
    def filter_runs(sweeps, methods, states, seeds):
        try:
            s = store()
            rows = filter_rows(run_rows(s, s.runs()), sweeps, methods, states, seeds)
        except Exception:  # noqa: BLE001 - the rows already shown stay; the next page load says what is wrong
            return dash.no_update, "the database could not be read again"
        return rows, f"{len(rows)} run(s) shown"

    @app.callback(Output("curves-link", "href"), Output("curves-link", "children"), Input("runs-grid", "selectedRows"))
    def selection_link(selected):
        ids = [str(row["id"]) for row in selected or []]
        if not ids:
            return "/curves", "training curves (tick runs to choose them)"
        return f"/curves?runs={','.join(ids)}", f"training curves of the {len(ids)} selected run(s)"

    @app.callback(Output("progress-content", "children"), Input("progress-interval", "n_intervals"))
    @guarded
    def refresh_progress(_):
        return progress_table(store())

    @app.callback(Output("table-content", "children"),
                  Input("t-number", "value"), Input("t-flags", "value"), Input("t-sweep", "value"))  # fmt: skip
    @guarded
    def show_table(number, flags, sweep):
        return paper_table(store(), int(number), flags or [], sweep)

    choices = [Input(f"p-{name}", "value") for name in ("task", "x", "log", "sweep")]

    @app.callback(Output("tradeoff-content", "children"), *choices)
    @guarded
    def show_tradeoff(task, x, log, sweep):
        fig = tradeoff_figure(store(), task, x, "log" in (log or []), sweep)
        return dcc.Graph(id="tradeoff-graph", figure=fig, config={"displaylogo": False})

    @app.callback(Output("tradeoff-clicked", "children"), Input("tradeoff-graph", "clickData"), prevent_initial_call=True)
    def tradeoff_click(click):
        keys = (click or {}).get("points", [{}])[0].get("customdata") or []
        if not keys:
            return ""
        links = []
        for k in keys:
            links += [dcc.Link(k, href=f"/run/{quote(k, safe='')}"), " "]
        return ["runs of this point: ", *links]

    @app.callback(Output("curves-content", "children"), Input("c-metric", "value"), Input("c-runs", "value"))
    @guarded
    def show_curves(metric, keys):
        s = store()
        if not keys:
            return html.P("Choose runs above.", className="note")
        runs = s.runs(keys=list(keys))
        fig = curves_figure(s, runs, metric)
        if not fig.data:
            return problem(f"none of these runs has recorded {metric} yet", "Nothing to show")
        return dcc.Graph(id="curves-graph", figure=fig, config={"displaylogo": False})

    app.vlbench_store = handle  # what it opened, or why it could not
    return app


def make_server(url: str, host: str = "127.0.0.1", port: int = 8050, refresh_s: float = 2.0):
    """A threaded WSGI server of the app (werkzeug's, as Flask runs), not started: `serve_forever()`
    runs it, `shutdown()` (from another thread) stops it. `port=0`: a free port (`.port` says which)."""
    from werkzeug.serving import WSGIRequestHandler, make_server as werkzeug_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs) -> None:  # one line per request (the refresh) is noise
            pass

    # werkzeug prints a failed bind and exits: try the address first, to say what is wrong as a UserError
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except (OSError, OverflowError) as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({getattr(e, 'strerror', None) or e})") from e
    app = create_app(url, refresh_s)
    try:
        server = werkzeug_server(host, port, app.server, threaded=True, request_handler=QuietHandler)
    except SystemExit as e:  # taken between the probe and now
        raise UserError(f"--host {host} --port {port}: cannot listen there") from e
    server.store_handle = app.vlbench_store
    return server


def serve(url: str, host: str = "127.0.0.1", port: int = 8050, refresh_s: float = 2.0,
          say: Callable[[str], None] = print) -> None:  # fmt: skip
    """`vlbench dashboard`: serve until Ctrl-C. Says where, and whether the store can be opened now."""
    server = make_server(url, host, port, refresh_s)
    handle: StoreHandle = server.store_handle
    try:
        handle.get()
        state = "read-only"
    except UserError as e:
        state = f"cannot be opened yet ({e}); the pages say so until it can"
    shown_host = f"[{host}]" if ":" in host else host
    say(f"vlbench dashboard on http://{shown_host}:{server.port}/ (database {handle.shown}: {state}); Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
