"""`vlbench dashboard`: its pages in a real headless browser (Debian's Chromium, driven by Playwright)
against a server on a loopback port over a database these tests fill through the Store API; and the
read-only store under it (it never writes, and says why a database cannot be shown).

The browser tests use one database and one server for the module, in file order: the pages are read
first, then the database file is checked unchanged, then a test writes a running run's progress (as
the sweep's heartbeat would) and watches the page follow. Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from services import REPO, _run_script, _unavailable_service
from typer.testing import CliRunner

from vlbench.config import OptimConfig, RunConfig, UserError
from vlbench.store import Store

CHROMIUM_SCRIPT = REPO / "scripts" / "local-chromium.sh"
TASKS = ("vqa", "gqa", "nlvr", "caption")
PROV = {"host": socket.gethostname(), "device": "cpu", "git_commit": "d840cfb", "versions": {"torch": "2.13.0"},
        "world_size": 1}  # fmt: skip
TOTAL = 100_000  # the fixture model's parameter count


# ---- the fixture database: a tiny Table 1 sweep, written through the Store API (no training) ----------


@dataclass
class Fixture:
    path: Path
    url: str
    running: tuple[int, str]  # (run id, owner) of the run left running
    running_key: str
    failed_key: str
    done_key: str
    families: set[str]  # the method families of Table 1's parameter-efficient runs


def add_run(store, sweep_id, method, sharing=None, hidden_dim=None, seed=0, percent=1.0, score=0.5, epochs=2,
            end="done", error=None, progress=None):  # fmt: skip
    cfg = RunConfig(method=method, sharing=sharing, hidden_dim=hidden_dim, seed=seed, optim=OptimConfig(epochs=epochs))
    run_id, owner = store.claim_run(sweep_id, cfg, PROV, run_dir=f"runs/table1-tiny/{cfg.key()}",
                                    fingerprint={"engine": "engine v3", "method": f"{method} v1"})  # fmt: skip
    trainable = TOTAL if method == "full" else int(TOTAL * percent / 100)
    visual = min(500, trainable)
    added = 0 if method == "full" else trainable - visual  # the method's own parameters
    components = {
        "lm": {"trainable": trainable - visual - added, "total": TOTAL - 500 - added},
        "visual_embedding": {"trainable": visual, "total": 500},
        "method": {"trainable": added, "total": added},
    }
    store.record_params(run_id, owner, trainable, TOTAL, "fixture: LM + visual embedding + method", components)
    steps = 20
    if epochs:
        store.record_curve(run_id, owner, [
            {"step": s, "epoch": (s - 1) * epochs // steps, "loss": 3.0 / s ** (0.3 + percent / 400),
             "lr": 1e-3 * (1 - s / steps), "samples_per_s": 250.0 + seed} for s in range(1, steps + 1, 2)
        ])  # fmt: skip
    for epoch in range(epochs):
        store.record_metrics(run_id, owner, "val", epoch, {t: {"score": score * (0.8 + 0.1 * epoch)} for t in TASKS})
    if end == "running":
        store.heartbeat(run_id, owner, progress)
        return cfg, (run_id, owner)
    if end == "failed":
        store.fail_run(run_id, owner, error)
        return cfg, (run_id, owner)
    store.record_metrics(run_id, owner, "test", max(epochs - 1, 0),
                         {t: {"score": score + 0.01 * i} for i, t in enumerate(TASKS)})  # fmt: skip
    store.finish_run(run_id, owner, {"train_seconds": 30.0 + percent, "eval_seconds": 4.0, "samples_per_second": 250.0,
                                     "peak_memory_mb": 40.0 + 2 * percent, "checkpoint_bytes": trainable * 4})  # fmt: skip
    return cfg, (run_id, owner)


def build_fixture(path: Path) -> Fixture:
    store = Store(f"sqlite:///{path}")
    sweep = store.get_or_create_sweep("table1-tiny", "image-text", "tiny", "vlbench sweep image-text --preset table1")
    add_run(store, sweep, "full", percent=100.0, score=0.62)
    add_run(store, sweep, "text-only", percent=0.0, score=0.30, epochs=0)
    add_run(store, sweep, "adapter", "multiple", 8, percent=12.0, score=0.60)
    add_run(store, sweep, "adapter", "half", 8, percent=8.0, score=0.59)
    done, _ = add_run(store, sweep, "adapter", "single", 8, percent=4.0, score=0.58)
    add_run(store, sweep, "adapter", "single", 16, percent=7.0, score=0.595)
    add_run(store, sweep, "hyperformer", None, 8, percent=5.0, score=0.55)
    add_run(store, sweep, "compacter", "single", 8, percent=2.0, score=0.54)
    add_run(store, sweep, "lora", "single", 8, percent=3.0, score=0.56)
    add_run(store, sweep, "prompt", "single", 8, percent=1.0, score=0.45)
    failed, _ = add_run(store, sweep, "prompt", "multiple", 8, percent=6.0, end="failed",
                        error="RuntimeError: the loss is NaN at epoch 2, step 37 (lr 0.001)")  # fmt: skip
    running, handle = add_run(store, sweep, "lora", "multiple", 8, percent=9.0, end="running",
                              progress={"phase": "train", "epoch": 0, "step": 3, "total_steps": 20, "eta_s": 95.0})  # fmt: skip
    seeds = store.get_or_create_sweep("seeds", "image-text", "tiny", "vlbench sweep image-text --seeds 1 --sweep seeds")
    add_run(store, seeds, "adapter", "single", 8, seed=1, percent=4.0, score=0.585)
    store.engine.dispose()  # the last connection closes: the WAL is checkpointed into the file
    return Fixture(path, f"sqlite:///{path}", handle, running.key(), failed.key(), done.key(),
                   {"adapter", "hyperformer", "compacter", "lora", "prompt"})  # fmt: skip


def file_state(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# ---- the browser and the server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium(request) -> str:
    """Debian's chromium, installed by scripts/local-chromium.sh when missing (skipped, with the reason
    printed, only where that cannot work: tests/services.py's rule)."""
    try:
        return _run_script(CHROMIUM_SCRIPT, "ensure").strip().splitlines()[-1]
    except (RuntimeError, IndexError) as e:
        _unavailable_service(request, "Chromium", e)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def dashboard_server(url: str, refresh_s: float = 1.0):
    from vlbench.dashboard import make_server

    server = make_server(url, "127.0.0.1", 0, refresh_s)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Fixture:
    fx = build_fixture(tmp_path_factory.mktemp("dashboard") / "vlbench.db")
    fx.before = file_state(fx.path)
    return fx


@pytest.fixture(scope="module")
def server(fixture_db) -> str:
    with dashboard_server(fixture_db.url) as base:
        yield base


class Tab:
    """A browser page that records console errors, uncaught exceptions and failed responses."""

    def __init__(self, browser, base: str, shots: Path):
        self.page = browser.new_page(viewport={"width": 1440, "height": 960})
        self.base, self.shots, self.errors = base, shots, []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("response", lambda r: self.errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

    def open(self, path: str, ready: str):
        self.page.goto(self.base + path)
        self.page.wait_for_selector(ready, timeout=30_000)
        self.settle()
        return self.page

    def settle(self) -> None:
        """Until Dash has no callback in flight."""
        self.page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')", timeout=30_000)
        self.page.wait_for_timeout(300)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.page.close()
        assert not self.errors, self.errors


@pytest.fixture
def tab(browser, server, tmp_path):
    t = Tab(browser, server, tmp_path)
    yield t
    t.close()  # no console error, page error or failed request on any page the test visited
    print(f"screenshots: {tmp_path}")


def wait_for_grid_rows(page, n: int) -> None:
    """Wait until the runs grid shows exactly n rows: after a filter, AG Grid re-renders (and may keep
    leaving rows in the page for a moment) after the run count's text has already changed."""
    page.wait_for_function(
        "n => document.querySelectorAll('#runs-grid .ag-center-cols-container .ag-row').length === n", arg=n
    )


def choose(page, dropdown_id: str, option: str) -> None:
    """Tick an option of a dcc.Dropdown as a person does: open it, click the option, close it."""
    page.locator(f"#{dropdown_id}").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


# ---- the pages --------------------------------------------------------------------------------------


def test_every_page_loads_without_console_errors(tab, fixture_db):
    page = tab.open("/", "#runs-grid .ag-row")
    wait_for_grid_rows(page, 13)
    assert "RuntimeError: the loss is NaN" in page.inner_text("#runs-grid")  # the failed run's error, in its row
    tab.shot("runs")
    tab.open("/progress", ".progress-row")
    tab.shot("progress")
    page = tab.open("/tables", "#paper-table")
    assert "Single Adapter" in page.inner_text("#paper-table")
    tab.shot("table1")
    page.get_by_label("the paper's numbers (--compare-paper)").check()
    page.get_by_label("costs (--cost)").check()
    tab.settle()
    headers = page.inner_text("#paper-table thead")
    assert "paper" in headers and "Δ" in headers and "peak MB" in headers
    tab.shot("table1-compare-paper-cost")
    page.get_by_label("2", exact=True).check()  # Table 2: no CLIP-T5 run in this database: a clear message
    tab.settle()
    assert "no finished runs for table 2" in page.inner_text("main")
    page = tab.open("/tradeoff", "#tradeoff-graph .js-plotly-plot")
    tab.shot("tradeoff-params")
    page.get_by_label("peak training memory").check()
    tab.settle()
    tab.shot("tradeoff-memory")
    tab.open("/curves", "#curves-graph .js-plotly-plot")
    tab.shot("curves")
    page = tab.open(f"/run/{fixture_db.done_key}", "#param-components")
    tab.shot("run-done")
    page = tab.open(f"/run/{fixture_db.failed_key}", ".problem")
    assert "RuntimeError: the loss is NaN" in page.inner_text("main")
    tab.shot("run-failed")
    page = tab.open("/nowhere", ".problem")
    assert "no page /nowhere" in page.inner_text("main")


def test_filters_and_sorting_change_the_rows(tab):
    page = tab.open("/", "#runs-grid .ag-row")
    wait_for_grid_rows(page, 13)
    choose(page, "f-sweep", "seeds")
    page.wait_for_function("() => document.querySelector('#runs-count').innerText.startsWith('1 run')")
    wait_for_grid_rows(page, 1)
    assert "s1" in page.inner_text("#runs-grid")
    page.goto(tab.base + "/")  # back to every run (a fresh page: the filters start empty)
    page.wait_for_selector("#runs-grid .ag-row")
    choose(page, "f-state", "failed")
    page.wait_for_function("() => document.querySelector('#runs-count').innerText.startsWith('1 run')")
    wait_for_grid_rows(page, 1)
    assert "prompt-multiple-d8-s0" in page.inner_text("#runs-grid")
    tab.shot("runs-filtered-failed")
    page.goto(tab.base + "/")
    page.wait_for_selector("#runs-grid .ag-row")
    choose(page, "f-method", "adapter")
    page.wait_for_function("() => document.querySelector('#runs-count').innerText.startsWith('5 run')")
    choose(page, "f-seed", "1")
    page.wait_for_function("() => document.querySelector('#runs-count').innerText.startsWith('1 run')")
    wait_for_grid_rows(page, 1)
    # sorting: the grid's own, by any column (here params %, ascending on the first click)
    page.goto(tab.base + "/")
    page.wait_for_selector("#runs-grid .ag-row")
    page.locator("#runs-grid .ag-header-cell[col-id='params_percent'] .ag-header-cell-label").click()
    first = "#runs-grid .ag-center-cols-container .ag-row[row-index='0'] [col-id='params_percent']"
    # the text-only prior trains nothing: first once the grid has re-sorted (waited for, not slept on)
    page.wait_for_function(f"() => document.querySelector(\"{first}\")?.innerText === '0'")


def test_tradeoff_has_one_trace_per_method_family(tab, fixture_db):
    page = tab.open("/tradeoff", "#tradeoff-graph .js-plotly-plot")
    traces = page.evaluate("() => document.querySelector('#tradeoff-graph .js-plotly-plot').data.map(t => "
                           "({meta: t.meta, name: t.name, hover: t.hovertext}))")  # fmt: skip
    families = [t["meta"]["family"] for t in traces if t["meta"]["kind"] == "family"]
    assert sorted(families) == sorted(fixture_db.families)  # one trace each, no family twice
    assert [t["meta"]["kind"] for t in traces].count("frontier") == 1
    adapter = next(t for t in traces if t["meta"].get("family") == "adapter")
    hover = " ".join(h for h in adapter["hover"] if h)
    assert "Single Adapter</b> d=8" in hover and "lr 0.001, 2 epochs" in hover and "adapter-single-d8-s0" in hover
    # hover and click the LoRA point as a person would: its config shows, then links to its run
    x, y = page.evaluate("""() => {
        const gd = document.querySelector('#tradeoff-graph .js-plotly-plot'), box = gd.getBoundingClientRect();
        const t = gd.data.find(t => t.meta.family == 'lora'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [box.x + xa._offset + xa.l2p(t.x[0]), box.y + ya._offset + ya.l2p(t.y[0])]; }""")
    page.mouse.move(x, y)
    page.wait_for_selector(".hoverlayer .hovertext")
    assert "Single LoRA" in page.locator(".hoverlayer").text_content()  # an SVG layer: its text, not innerText
    tab.shot("tradeoff-hover")
    page.mouse.click(x, y)
    page.wait_for_selector("#tradeoff-clicked a")
    page.locator("#tradeoff-clicked a").first.click()
    page.wait_for_selector("#param-components")
    assert "lora-single-d8-s0" in page.inner_text("main h2")
    page.go_back()
    page.wait_for_selector("#tradeoff-graph .js-plotly-plot")
    tab.settle()
    # against peak memory, full fine-tuning is a point (a family of its own), not a reference line
    page.get_by_label("peak training memory").check()
    tab.settle()
    families = page.evaluate("() => document.querySelector('#tradeoff-graph .js-plotly-plot').data"
                             ".filter(t => t.meta.kind == 'family').map(t => t.meta.family)")  # fmt: skip
    assert sorted(families) == sorted(fixture_db.families | {"full"})


def test_curves_of_selected_runs(tab):
    page = tab.open("/", "#runs-grid .ag-row")
    for row in (2, 4):  # two adapter runs (row 1, the text-only prior, trains nothing: no curve)
        page.locator(f"#runs-grid .ag-row[row-index='{row}'] .ag-selection-checkbox input").first.check()
    page.wait_for_function("() => document.querySelector('#curves-link').innerText.includes('2 selected')")
    page.locator("#curves-link").click()
    page.wait_for_selector("#curves-graph .js-plotly-plot")
    tab.settle()
    names = page.evaluate("() => document.querySelector('#curves-graph .js-plotly-plot').data.map(t => t.name)")
    assert len(names) == 2 and all("(table1-tiny)" in n for n in names)
    page.get_by_label("vqa", exact=True).check()  # validation score per epoch
    tab.settle()
    xs = page.evaluate("() => document.querySelector('#curves-graph .js-plotly-plot').data[0].x")
    assert list(xs) == [1, 2]


def test_run_detail(tab, fixture_db):
    page = tab.open(f"/run/{fixture_db.done_key}", "#param-components")
    components = page.inner_text("#param-components")
    assert "visual_embedding" in components and "method" in components and "4.000" in components
    config = page.inner_text("#run-config")
    assert '"hidden_dim": 8' in config and '"sharing": "single"' in config
    main = page.inner_text("main")
    assert "d840cfb" in main and "peak memory mb" in main and "engine v3" in main


def test_the_database_file_is_unchanged(fixture_db, server):
    """After every page above: the same bytes and mtime (the dashboard opened it read-only)."""
    assert file_state(fixture_db.path) == fixture_db.before


def test_running_progress_updates_without_a_reload(tab, fixture_db):
    page = tab.open("/progress", ".progress-row")
    assert "epoch 1 step 3/20" in page.inner_text("main")
    page.evaluate("() => { window.__sameDocument = true; }")
    writer = Store(fixture_db.url, create=False)  # as the sweep's RunMonitor heartbeat writes it
    run_id, owner = fixture_db.running
    writer.heartbeat(run_id, owner, {"phase": "train", "epoch": 1, "step": 13, "total_steps": 20, "eta_s": 40.0})
    writer.engine.dispose()
    page.wait_for_function("() => document.querySelector('main').innerText.includes('epoch 2 step 13/20')", timeout=20_000)
    assert page.evaluate("() => window.__sameDocument === true")  # refreshed in place, not reloaded
    assert "0:00:40" in page.inner_text("main")  # the ETA the heartbeat carried
    tab.shot("progress-updated")


# ---- databases that cannot be shown: a page that says why --------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamped(path: Path, revision: str) -> Path:
    Store(f"sqlite:///{path}").engine.dispose()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    con.commit()
    con.close()
    return path


def test_unopenable_databases_are_pages_not_tracebacks(browser, chromium, tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    cases = {
        "missing": (f"sqlite:///{tmp_path}/missing.db", "no database at"),
        "empty": (f"sqlite:///{empty}", "the database is empty"),
        "newer": (f"sqlite:///{stamped(tmp_path / 'newer.db', '9999_future')}", "written by a newer vlbench"),
        "older": (f"sqlite:///{stamped(tmp_path / 'older.db', '0004')}", "older than this vlbench's"),
        "unreachable": (f"postgresql+psycopg://vlbench@127.0.0.1:{free_port()}/vlbench", "connect"),
    }
    before = {name: file_state(Path(url.removeprefix("sqlite:///"))) for name, (url, _) in cases.items()
              if name in ("empty", "newer", "older")}  # fmt: skip
    for name, (url, expected) in cases.items():
        with dashboard_server(url) as base:
            t = Tab(browser, base, tmp_path)
            for path in ("/", "/progress", "/tables", "/tradeoff", "/curves"):
                page = t.open(path, ".problem")
                text = page.inner_text("main")
                assert expected in text and "Traceback" not in text, (name, path, text)
            t.shot(f"problem-{name}")
            t.close()
    for name, state in before.items():  # not upgraded, not touched
        assert file_state(Path(cases[name][0].removeprefix("sqlite:///"))) == state, name


# ---- the read-only store, and the command (no browser) ----------------------------------------------


def test_read_only_store_never_writes(tmp_path):
    fx = build_fixture(tmp_path / "r.db")
    before = file_state(fx.path)
    store = Store(fx.url, read_only=True)
    assert len(store.runs()) == 13 and len(store.curves([r.id for r in store.runs()])) > 0
    run_id, owner = fx.running
    with pytest.raises(sa.exc.OperationalError, match="readonly database"):  # refused by SQLite itself
        store.heartbeat(run_id, owner, {"phase": "train"})
    store.engine.dispose()
    assert file_state(fx.path) == before
    with pytest.raises(UserError, match="no database at"):
        Store(f"sqlite:///{tmp_path}/missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()
    older = stamped(tmp_path / "older.db", "0003")
    state = file_state(older)
    with pytest.raises(UserError, match="version 0003, older than this vlbench's 0005; it was opened read-only"):
        Store(f"sqlite:///{older}", read_only=True)
    assert file_state(older) == state
    with pytest.raises(UserError, match="9999_future, written by a newer vlbench"):
        Store(f"sqlite:///{stamped(tmp_path / 'newer.db', '9999_future')}", read_only=True)


def test_read_only_store_on_postgresql(postgres_db_factory):
    empty = postgres_db_factory()
    with pytest.raises(UserError, match="the database is empty"):
        Store(empty, read_only=True)
    url = postgres_db_factory()
    writer = Store(url)
    sweep = writer.get_or_create_sweep("s", "image-text", "tiny", "test")
    _, (run_id, owner) = add_run(writer, sweep, "adapter", "single", 8, percent=4.0)
    reader = Store(url, read_only=True)
    assert [r.label for r in reader.runs()] == ["adapter-single-d8-s0"]
    with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
        with reader.engine.begin() as conn:
            conn.execute(sa.text("UPDATE runs SET error = 'x'"))
    assert writer.runs()[0].error is None
    reader.engine.dispose()
    writer.engine.dispose()


def test_figure_and_progress_data_without_a_browser(tmp_path):
    from vlbench.dashboard import progress_rows, tradeoff_figure

    fx = build_fixture(tmp_path / "d.db")
    store = Store(fx.url, read_only=True)
    fig = tradeoff_figure(store, "avg", "params")
    families = [t.meta["family"] for t in fig.data if t.meta["kind"] == "family"]
    assert sorted(families) == sorted(fx.families)
    (row,) = progress_rows(store.runs())
    assert (row["run"], row["state"], row["where"]) == ("lora-multiple-d8-s0", "running", "epoch 1 step 3/20")
    assert row["eta"] == "0:01:35"  # what the heartbeat carried, as `vlbench status` shows it
    assert row["fraction"] == pytest.approx(0.15) and row["heartbeat_s"] < 120


def test_command_warns_beyond_loopback(monkeypatch, tmp_path):
    import vlbench.dashboard
    from vlbench.cli import app

    calls = []
    monkeypatch.setattr(vlbench.dashboard, "serve", lambda url, host, port, refresh, say: calls.append((url, host, port)))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dashboard"])
    assert result.exit_code == 0 and "warning" not in result.output
    assert calls[-1] == ("sqlite:///runs/vlbench.db", "127.0.0.1", 8050)  # the default database, as `report`'s
    assert not (tmp_path / "runs").exists()  # nothing created
    result = CliRunner().invoke(app, ["dashboard", "--host", "0.0.0.0", "--port", "9001", "--db", "sqlite:///x.db"])
    assert result.exit_code == 0, result.output
    assert "warning: --host 0.0.0.0: the dashboard is reachable from the network" in " ".join(result.output.split())
    assert calls[-1] == ("sqlite:///x.db", "0.0.0.0", 9001)


def test_port_in_use_is_one_line(tmp_path):
    from vlbench.dashboard import make_server

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {port}: cannot listen there"):
            make_server(f"sqlite:///{tmp_path}/x.db", "127.0.0.1", port)


if os.environ.get("VLBENCH_DASHBOARD_SHOTS"):  # keep a copy of the screenshots (e.g. for a README or a review)

    @pytest.fixture(autouse=True)
    def _keep_screenshots(tmp_path):
        yield
        import shutil

        target = Path(os.environ["VLBENCH_DASHBOARD_SHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, target / png.name)
