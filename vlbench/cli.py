"""The command line: each command parses its options and calls one library function."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from vlbench.config import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="vlbench: parameter-efficient VL transfer benchmarks")
sweep_app = typer.Typer(no_args_is_help=True, help="Run a grid of training jobs and store the results.")
app.add_typer(sweep_app, name="sweep")
features_app = typer.Typer(no_args_is_help=True, help="CLIP grid features of image files, in a feature store.")
app.add_typer(features_app, name="features")
plot_app = typer.Typer(no_args_is_help=True, help="Paper-style figures from the database.")
app.add_typer(plot_app, name="plot")
eval_app = typer.Typer(no_args_is_help=True, help="Score prediction files with the official metrics.")
app.add_typer(eval_app, name="eval")
db_app = typer.Typer(no_args_is_help=True, help="The results database: export it, rebuild it from run folders.")
app.add_typer(db_app, name="db")
backbones_app = typer.Typer(no_args_is_help=True, help="The tiny profile's backbones, shipped in the package.")
app.add_typer(backbones_app, name="backbones")
console = Console()
err_console = Console(stderr=True)

RUNS_DIR = Path("runs")
REPORTS_DIR = Path("reports")
DB_HELP = "SQLAlchemy URL of the results database [default: sqlite:///runs/vlbench.db]"
SUPERSEDED_HELP = "also the runs whose fingerprint is no longer today's (marked superseded; `vlbench status` says why)"


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def use_lm_weights(lm: str | None, folder: str | None) -> None:
    """--lm-weights: the folder the LM family's environment variable names for this process and every
    worker it starts (where the paper profile reads its LM, and the fingerprint its files)."""
    if folder is None:
        return
    from vlbench.backbones import LM_WEIGHTS_ENV

    family = lm or "bart"
    if family not in LM_WEIGHTS_ENV:
        raise UserError(f"--lm: unknown language model '{family}' (choose from {', '.join(LM_WEIGHTS_ENV)})")
    if not Path(folder).is_dir():
        raise UserError(f"--lm-weights: {folder}: no such folder")
    os.environ[LM_WEIGHTS_ENV[family]] = str(Path(folder).resolve())


def csv_list(value: str | None, flag: str, cast=str) -> tuple | None:
    if value is None:
        return None
    try:
        items = tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag}: expected a comma-separated list of {cast.__name__} values, got '{value}'") from None
    if not items:
        raise UserError(f"{flag}: empty list")
    return items


def key_values(values: list[str] | None, flag: str) -> tuple[tuple[str, str], ...]:
    """Repeatable KEY=VALUE flags, as sorted pairs of strings."""
    pairs = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag}: expected KEY=VALUE, got '{item}'")
        pairs[key.strip()] = value
    return tuple(sorted(pairs.items()))


def parse_options(values: list[str] | None) -> tuple:
    """`--option key=value` pairs; values are read as JSON when they parse (4, 0.1, true), else as text."""
    import json

    options = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option: expected key=value, got '{item}'")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return tuple(sorted(options.items()))


def project_folder(path: Path, flag: str) -> Path:
    """runs/ or reports/: a folder (made when missing), never a plain file in its place."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag}: {path} exists and is not a folder; move it away (vlbench writes its {path.name} there)")
    return path


def open_store(db: str | None, *, reading: bool = False):
    """The results store; a reading command neither creates a missing SQLite file nor needs write access."""
    from vlbench.store import Store

    if db is None:
        project_folder(RUNS_DIR, "runs")
    store = Store(db or Store.default_url(RUNS_DIR), create=not reading, writer=not reading)
    for notice in store.notices:
        err_console.print(f"[yellow]warning:[/yellow] {escape(notice)}", highlight=False, soft_wrap=True)
    return store


@sweep_app.command("image-text")
def sweep_image_text(
    profile: str = typer.Option("tiny", help="tiny (offline, CPU) or paper"),
    lm: Optional[str] = typer.Option(
        None, help="language model: bart or t5 (the paper's CLIP-BART / CLIP-T5) or causal (a decoder-only LM) [default: bart]"
    ),
    lm_weights: Optional[str] = typer.Option(
        None, "--lm-weights", help="the paper profile's LM: a save_pretrained folder (model and tokenizer) [default: $VLBENCH_<LM>_WEIGHTS]"
    ),
    methods: Optional[str] = typer.Option(
        None,
        help="comma-separated: full, adapter, hyperformer, compacter, lora, prompt, proj-only, proj-ln "
        "[default: full,adapter]",
    ),
    preset: Optional[str] = typer.Option(
        None, help="a named grid instead of --methods/--sharing: table1 (every Table 1 row), table2 (CLIP-T5), table3 "
        "(CLIP/BART trained or frozen, VQA), table4 (Table 4's methods), table5 (ablations), figure4 (hidden-dim sweep)"
    ),
    sharing: Optional[str] = typer.Option(None, help="comma-separated: multiple, half, single [default: per method]"),
    hidden_dims: Optional[str] = typer.Option(None, help="comma-separated bottleneck sizes [default: d_model/8]"),
    seeds: str = typer.Option("0", help="comma-separated seeds"),
    epochs: Optional[int] = typer.Option(None, help="training epochs [default: profile's]"),
    lr: Optional[float] = typer.Option(None, help="learning rate for every job [default: per method]"),
    precision: Optional[str] = typer.Option(
        None, help="fp32 or bf16 (autocast forward passes, fp32 weights and optimizer) [default: fp32; paper on CUDA: bf16]"
    ),
    batch_size: Optional[int] = typer.Option(None, help="batch size [default: profile's]"),
    n_train: Optional[int] = typer.Option(None, help="examples per task for training (synthetic: made; real: first n)"),
    n_val: Optional[int] = typer.Option(None, help="examples per task for validation (synthetic: made; real: first n)"),
    n_test: Optional[int] = typer.Option(None, help="examples per task for test (synthetic: made; real: first n)"),
    option: Optional[list[str]] = typer.Option(None, help="method knob key=value, repeatable (e.g. lora_alpha=16)"),
    backbone: Optional[str] = typer.Option(
        None, help="backbone size, tiny or paper, to pair with the profile's data (e.g. --profile paper --backbone tiny) "
        "[default: the profile's]"
    ),
    data_root: Optional[str] = typer.Option(
        None, help="paper profile: folder of the real datasets (VL-T5 layout) [default: $VLBENCH_DATA_ROOT]"
    ),
    features: Optional[str] = typer.Option(
        None, help="paper profile: the CLIP feature store [default: <data root>/features/<CLIP model>]"
    ),
    images: Optional[str] = typer.Option(
        None, help="real data, a model that trains CLIP (--option train_vision=true): the folder of the tasks' image files"
    ),
    clip_weights: Optional[str] = typer.Option(
        None, "--clip-weights", help="real data, CLIP RN101 training: its weights to start from (a file or an open_clip tag)"
    ),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="sweep name [default: <suite>-<profile>]"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the resolved jobs and exit"),
    backend: str = typer.Option("local", help="local (this machine) or slurm (a job array through submitit)"),
    workers: Optional[int] = typer.Option(
        None, help="local: runs at once, each in its own process [default: the GPU count; 1 on CPU]"
    ),
    nproc_per_run: int = typer.Option(1, help="processes per run (DistributedDataParallel; gloo on CPU, NCCL on GPUs)"),
    checkpoint_every: int = typer.Option(0, help="also checkpoint every N optimizer steps (always at epoch ends)"),
    log_every: Optional[int] = typer.Option(
        None, help="a training-curve point (loss, lr, samples/s) every N optimizer steps [default: 100 points per run]"
    ),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="keep finished runs' full checkpoints"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="train again the runs that failed before"),
    rescore: bool = typer.Option(
        False, "--rescore", help="done runs whose metrics changed since: re-score their trained models instead of retraining"
    ),
    wait: bool = typer.Option(False, "--wait", help="slurm: wait for the job array, showing the live view"),
    slurm_partition: Optional[str] = typer.Option(None, help="slurm: partition [default: the cluster's]"),
    slurm_time: int = typer.Option(60, help="slurm: time limit per run in minutes (a run at its limit is requeued)"),
    slurm_gpus: int = typer.Option(0, help="slurm: GPUs per run"),
    slurm_cpus: int = typer.Option(2, help="slurm: CPUs per run"),
    slurm_array_parallelism: int = typer.Option(64, help="slurm: array tasks running at once"),
    slurm_extra: Optional[list[str]] = typer.Option(None, help="slurm: an sbatch parameter KEY=VALUE, repeatable"),
    slurm_max_requeues: int = typer.Option(3, help="slurm: requeues after a time limit or preemption"),
    log_to: Optional[str] = typer.Option(
        None, help="comma-separated: mlflow, tensorboard: log each finished run there too (pip install "
        "'vlbench\\[trackers]')"
    ),
    mlflow_uri: Optional[str] = typer.Option(
        None, help="--log-to mlflow: MLflow tracking URI [default: sqlite:///<project>/mlruns/mlflow.db, next to runs/]"
    ),
):
    """Train every job of a method x sharing x hidden-dim x seed grid on the image-text tasks."""
    sweep_suite("image-text", **locals())  # locals(): this command's options, nothing else is defined yet


@sweep_app.command(
    "video-text",
    help="Train every job of a method x sharing x hidden-dim x seed grid on the video-text tasks (TVQA, How2QA, "
    "TVC, YC2C; the paper's Table 4).",
)
@functools.wraps(sweep_image_text)  # the same options
def sweep_video_text(**options):
    sweep_suite("video-text", **options)


def sweep_suite(
    suite: str, *, profile, lm, lm_weights, methods, preset, sharing, hidden_dims, seeds, epochs, lr, precision, batch_size, n_train, n_val,
    n_test, option, backbone, data_root, features, images, clip_weights, sweep_name, db, dry_run, backend, workers, nproc_per_run,
    checkpoint_every, log_every, keep_checkpoints, retry_failed, rescore, wait, slurm_partition, slurm_time, slurm_gpus, slurm_cpus,
    slurm_array_parallelism, slurm_extra, slurm_max_requeues, log_to, mlflow_uri,
) -> None:
    """Expand the sweep options into one suite's jobs and run them (or list them with --dry-run)."""
    from vlbench.execution import ExecutionOptions, SlurmOptions
    from vlbench.grid import GridRequest, check_sweep_name, expand
    from vlbench.sweep import plan_table, run_sweep

    try:
        use_lm_weights(lm, lm_weights)
        name = check_sweep_name(sweep_name or f"{suite}-{profile}")
        execution = ExecutionOptions(
            backend=backend, workers=workers, nproc_per_run=nproc_per_run, checkpoint_every=checkpoint_every, log_every=log_every,
            keep_checkpoints=keep_checkpoints, retry_failed=retry_failed, rescore=rescore, wait=wait,
            slurm=SlurmOptions(
                partition=slurm_partition, time_min=slurm_time, gpus=slurm_gpus, cpus=slurm_cpus,
                array_parallelism=slurm_array_parallelism, extra=key_values(slurm_extra, "--slurm-extra"),
                max_requeues=slurm_max_requeues,
            ),
            log_to=csv_list(log_to, "--log-to") or (), mlflow_uri=mlflow_uri,
        )  # fmt: skip
        execution.check()
        request = GridRequest(
            suite=suite,
            profile=profile,
            lm=lm,
            methods=csv_list(methods, "--methods"),
            sharing=csv_list(sharing, "--sharing"),
            hidden_dims=csv_list(hidden_dims, "--hidden-dims", int),
            seeds=csv_list(seeds, "--seeds", int),
            epochs=epochs,
            lr=lr,
            precision=precision,
            batch_size=batch_size,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            options=parse_options(option),
            preset=preset,
            backbone=backbone,
            data_root=data_root,
            features=features,
            images=images,
            clip_weights=clip_weights,
        )
        configs = expand(request)
        if dry_run:
            console.print(plan_table(configs))
            return
        project_folder(REPORTS_DIR, "reports")
        runs_dir = project_folder(RUNS_DIR, "runs")
        store = open_store(db)
        command = shlex.join(["vlbench", *(store.url if arg == db else arg for arg in sys.argv[1:])])  # no password
        summary = run_sweep(configs, store, name, command, runs_dir, console, execution)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:  # Ctrl-C twice: stopped at once
        err_console.print("stopped at once; the interrupted runs resume from their last checkpoints on the next sweep")
        raise typer.Exit(130)
    if summary.submitted and not wait:
        console.print(f"`vlbench status --sweep {name}` shows the array's progress")
        return
    console.print(
        f"sweep finished in {summary.seconds:.1f}s: {len(summary.done)} trained, "
        f"{len(summary.skipped)} already done, {len(summary.failed)} failed"
        + (f", {len(summary.interrupted)} interrupted" if summary.interrupted else "")
        + (f", {len(summary.superseded)} superseded (trained again)" if summary.superseded else "")
        + (f", {len(summary.rescored)} re-scored" if summary.rescored else "")
    )
    for label, reason in summary.failed:
        err_console.print(f"[red]failed[/red] {escape(label)}: {escape(reason)}", highlight=False)
    for label, where in summary.interrupted:
        err_console.print(f"[yellow]interrupted[/yellow] {escape(label)}: {escape(where)}", highlight=False)
    if summary.interrupted:
        err_console.print("run the same command again to resume the interrupted runs from their checkpoints")
    if summary.failed:
        raise typer.Exit(1)
    if summary.interrupted:
        raise typer.Exit(130)


@app.command()
def params(
    suite: str = typer.Argument("image-text", help="image-text (Table 1 rows) or video-text (Table 4 rows)"),
    profile: str = typer.Option("paper", help="paper (CLIP RN101 + BART-base / T5-base) or tiny"),
    lm: str = typer.Option("bart", help="language model: bart, t5 or causal"),
    lm_weights: Optional[str] = typer.Option(
        None, "--lm-weights", help="the LM's save_pretrained folder (causal: its config.json is read) [default: $VLBENCH_<LM>_WEIGHTS]"
    ),
    methods: Optional[str] = typer.Option(None, help="comma-separated methods [default: the paper's Table 1 rows]"),
    sharing: Optional[str] = typer.Option(None, help="comma-separated sharing modes"),
    hidden_dims: Optional[str] = typer.Option(None, help="comma-separated hidden dims"),
    option: Optional[list[str]] = typer.Option(None, help="method knob key=value, repeatable (as on sweep)"),
    fmt: str = typer.Option("markdown", "--format", help="markdown or json"),
):
    """Updated-params % of each job, from the architectures alone (no weights, no data, no network)."""
    import json

    from vlbench.grid import GridRequest, expand
    from vlbench.params import paper_table_params, params_rows
    from vlbench.report import markdown

    try:
        if fmt not in ("markdown", "json"):
            raise UserError(f"--format: unknown format '{fmt}' (choose from markdown, json)")
        use_lm_weights(lm, lm_weights)
        if methods is None and sharing is None and hidden_dims is None and not option:
            rows = paper_table_params(suite, profile, lm)
        else:
            request = GridRequest(
                suite=suite,
                profile=profile,
                lm=lm,
                methods=csv_list(methods, "--methods"),
                sharing=csv_list(sharing, "--sharing"),
                hidden_dims=csv_list(hidden_dims, "--hidden-dims", int),
                options=parse_options(option),
            )
            rows = params_rows(expand(request))
    except UserError as e:
        fail(str(e))
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        import pandas as pd

        print(markdown(pd.DataFrame(rows, dtype=object)), end="")


@app.command()
def status(
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="only this sweep"),
    failed: bool = typer.Option(False, "--failed", help="only the failed runs, with their errors"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """List the runs in the database and their state (a running run whose owner is gone shows as stale)."""
    from vlbench.live import status_tables

    try:
        tables = status_tables(open_store(db, reading=True), sweep_name, failed)
    except UserError as e:
        fail(str(e))
    if not tables:
        console.print("no failed runs" if failed else "no runs yet; start one with `vlbench sweep image-text`")
    for table in tables:
        console.print(table)


@app.command()
def report(
    table: int = typer.Option(
        1, "--table", help="the paper's table: 1 image-text, 2 CLIP-T5, 3 CLIP/BART frozen or trained, 4 video-text, "
        "5 ablation"
    ),
    fmt: str = typer.Option("markdown", "--format", help="markdown (rendered in the terminal), latex, csv, json, html"),
    compare_paper: bool = typer.Option(False, "--compare-paper", help="the paper's numbers beside ours, with the difference"),
    cost: bool = typer.Option(False, "--cost", help="add training time, samples/s, peak memory and checkpoint size"),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="only this sweep"),
    profile: Optional[str] = typer.Option(None, help="only runs of this profile"),
    include_superseded: bool = typer.Option(False, "--include-superseded", help=SUPERSEDED_HELP),
    lm: Optional[str] = typer.Option(None, help="the table's rows on another LM family (bart, t5, causal)"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """Render a paper-style table from the database; also written under reports/."""
    from vlbench.report import FORMATS, build_table, render, rich_table, write_report

    try:
        if fmt not in FORMATS:
            raise UserError(f"--format: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
        result = build_table(
            open_store(db, reading=True), table, sweep=sweep_name, profile=profile, compare_paper=compare_paper, cost=cost,
            include_superseded=include_superseded, lm=lm,
        )
    except UserError as e:
        fail(str(e))
    text = render(result, fmt)
    try:
        path = write_report(text, project_folder(REPORTS_DIR, "reports"), f"table{table}", fmt)
    except UserError as e:
        fail(str(e))
    if fmt == "markdown" and console.is_terminal:
        console.print(rich_table(result))
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    err_console.print(f"[dim]written to {path}[/dim]")


@app.command("evaluate")
def evaluate_run(
    run: str = typer.Argument(..., help="a run key, or a run's label as `vlbench status` prints it (adapter-single-d8-s0)"),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="the sweep whose run has that label (when several do)"),
    split: str = typer.Option("test", help="val or test"),
    predictions_out: Optional[Path] = typer.Option(
        None, help="write each task's predictions here, in the official formats (<task>_<split>.json; NLVR2: .csv "
        "identifier,prediction lines). Ids: the datasets' own on real data (VQA question_id, COCO image id, GQA "
        "questionId, NLVR2 identifier); on synthetic data each example's uid (vqa-test-00003, ...) stands in for them"
    ),
    fmt: str = typer.Option("text", "--format", help="text (a table) or json ({task: {metric: value}}, x100 as report)"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """Rebuild a finished run's model from its run folder (config.json, trainable.safetensors) and evaluate it."""
    import json

    from rich.progress import Progress

    from vlbench.runs import evaluate_run as evaluate, scores_table

    try:
        if fmt not in ("text", "json"):
            raise UserError(f"--format: unknown format '{fmt}' (choose from text, json)")
        with Progress(console=err_console, transient=True) as progress:
            result = evaluate(open_store(db, reading=True), run, sweep_name, split, predictions_out, progress)
    except UserError as e:
        fail(str(e))
    for note in result.notes:
        err_console.print(f"[yellow]warning:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    if fmt == "json":
        print(json.dumps(result.scaled(), indent=2))
    else:
        console.print(scores_table(result))
    for path in result.prediction_files:
        err_console.print(f"[dim]predictions written to {escape(str(path))}[/dim]", highlight=False)


@plot_app.command("tradeoff")
def plot_tradeoff(
    task: str = typer.Option("avg", help="avg, vqa, gqa, nlvr or caption"),
    fmt: str = typer.Option("png", "--format", help="png, pdf or svg"),
    log_x: bool = typer.Option(False, "--log-x", help="log scale for the x axis"),
    x: str = typer.Option("params", "--x", help="params (Figure 4: updated params %) or memory (peak training memory)"),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="only this sweep"),
    profile: Optional[str] = typer.Option(None, help="only runs of this profile"),
    include_superseded: bool = typer.Option(False, "--include-superseded", help=SUPERSEDED_HELP),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """Figure 4: score vs updated parameters (%) per method family and hidden dim (--x memory: vs peak
    training memory); written under reports/."""
    from vlbench.plot import write_tradeoff

    try:
        path = write_tradeoff(
            open_store(db, reading=True), project_folder(REPORTS_DIR, "reports"), task, fmt, log_x, sweep=sweep_name,
            profile=profile, include_superseded=include_superseded, x=x,
        )
    except UserError as e:
        fail(str(e))
    console.print(f"written to {path}")


@plot_app.command("curves")
def plot_curves(
    metric: str = typer.Option("loss", help="loss, lr, samples_per_s (per step), or vqa, gqa, nlvr, caption (val, per epoch)"),
    fmt: str = typer.Option("png", "--format", help="png, pdf or svg"),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="only this sweep"),
    profile: Optional[str] = typer.Option(None, help="only runs of this profile"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """Training curves: one line per configuration (seeds averaged, their range as a band); under reports/."""
    from vlbench.plot import write_curves

    try:
        path = write_curves(open_store(db, reading=True), project_folder(REPORTS_DIR, "reports"), metric, fmt,
                            sweep=sweep_name, profile=profile)  # fmt: skip
    except UserError as e:
        fail(str(e))
    console.print(f"written to {path}")


@app.command()
def dashboard(
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    port: int = typer.Option(8050, help="TCP port to listen on (0: any free port)"),
    host: str = typer.Option(
        "127.0.0.1", help="address to listen on; 0.0.0.0 makes the store readable from the network (no login)"
    ),
    refresh: float = typer.Option(2.0, help="seconds between two reads of the running runs' progress"),
):
    """A local web app over the database, read-only: runs, live progress, Tables 1-5, Figure 4, curves,
    each run's details (pip install 'vlbench[dashboard]')."""
    try:
        from vlbench.dashboard import host_warning, serve
    except ImportError as e:
        fail(f"the dashboard needs its extra: pip install 'vlbench[dashboard]' ({e})")
    from vlbench.store import Store

    try:
        if not 0 < refresh <= 3600:
            raise UserError(f"--refresh: must be a number of seconds in (0, 3600], got {refresh}")
        if db is None:
            project_folder(RUNS_DIR, "runs")
        warning = host_warning(host)
        if warning:
            err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
        say = lambda line: console.print(escape(line), highlight=False, soft_wrap=True)  # noqa: E731
        serve(db or Store.default_url(RUNS_DIR), host, port, refresh, say=say)
    except UserError as e:
        fail(str(e))


@features_app.command("extract")
def features_extract(
    images: Path = typer.Option(..., help="folder of .jpg/.jpeg/.png images, subfolders included; id = file name without extension"),
    out: Path = typer.Option(..., help="feature store folder (created; one already there is resumed)"),
    model: str = typer.Option("RN101", help="RN101 (or another open_clip CLIP ResNet), or tiny (vlbench's tiny CLIP)"),
    weights: Optional[str] = typer.Option(
        None, help="CLIP weights: an open_clip checkpoint file, or a pretrained tag such as openai (open_clip downloads it)"
    ),
    random_weights: bool = typer.Option(False, "--random-weights", help="seeded random weights, for smoke tests only"),
    batch_size: int = typer.Option(32, help="images per forward pass"),
):
    """Extract CLIP grid features (RN101: 49 x 2048 per image); images already in the store are skipped."""
    from vlbench.features import extract_folder

    try:
        summary = extract_folder(images, out, model, weights, random_weights, batch_size, RUNS_DIR / "cache", console)
    except UserError as e:
        fail(str(e))
    console.print(
        f"{summary.extracted} images extracted, {summary.already} already in {out} "
        f"({summary.images} found) in {summary.seconds:.1f}s"
    )


@eval_app.command("vqa")
def eval_vqa(
    predictions: Path = typer.Option(..., help='results file: [{"question_id": int, "answer": str}, ...]'),
    annotations: Path = typer.Option(..., help="official annotations, e.g. v2_mscoco_val2014_annotations.json"),
    questions: Optional[Path] = typer.Option(
        None, help="score only these questions: an official questions file or a list of records with question_id "
        "(e.g. VL-T5's karpathy_test.json); without it, every annotated question"
    ),
    as_json: bool = typer.Option(False, "--json", help='print {"overall", "perAnswerType", "questions"} as JSON'),
):
    """VQA accuracy as the official vqaEval.py computes and prints it; every question scored needs one prediction."""
    import json

    from rich.progress import Progress

    from vlbench.evaluate import evaluate_vqa

    try:
        with Progress(console=err_console, transient=True) as progress:
            scores = evaluate_vqa(predictions, annotations, questions, progress)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(scores, indent=2))
        return
    print(f"Overall Accuracy is: {scores['overall']:.02f}\n")
    print("Per Answer Type Accuracy is the following:")
    for answer_type, accuracy in scores["perAnswerType"].items():
        print(f"{answer_type} : {accuracy:.02f}")
    print(f"\n({scores['questions']} questions)")


@eval_app.command("caption")
def eval_caption(
    predictions: Path = typer.Option(..., help='results file: [{"image_id": int, "caption": str}, ...]'),
    references: Path = typer.Option(
        ..., help="COCO captions format (captions_val2014.json) or Karpathy's dataset_coco.json (image id = cocoid)"
    ),
    split: Optional[str] = typer.Option(None, help="Karpathy dataset_coco.json only: the split scored (test when not given)"),
    tokenizer: str = typer.Option("auto", help="auto (PTB when java is on PATH, else simple), ptb, or simple (pure Python)"),
    as_json: bool = typer.Option(False, "--json", help='print {"CIDEr", "BLEU-4", "tokenizer", "images"} as JSON (unscaled)'),
):
    """CIDEr-D and BLEU-4 as the COCO caption evaluation (pycocoevalcap) computes them, over the whole set."""
    import json

    from vlbench.evaluate import TOKENIZERS, evaluate_captions

    try:
        with err_console.status("scoring captions"):
            scores = evaluate_captions(predictions, references, split, tokenizer)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(scores, indent=2))
        return
    print(f"CIDEr: {100 * scores['CIDEr']:.2f}")
    print(f"BLEU-4: {100 * scores['BLEU-4']:.2f}")
    print(f"\n({scores['images']} images, x100, {TOKENIZERS[scores['tokenizer']]})")


@db_app.command("export")
def db_export(
    fmt: str = typer.Option(
        "csv", "--format", help="csv, json or parquet (a file); mlflow or tensorboard (each done run logged there, as "
        "sweep --log-to does)"
    ),
    out: Optional[Path] = typer.Option(None, help="output file [default: reports/export/runs.<format>]"),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", help="only this sweep"),
    mlflow_uri: Optional[str] = typer.Option(
        None, help="--format mlflow: MLflow tracking URI [default: sqlite:///<project>/mlruns/mlflow.db, next to runs/]"
    ),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """One row per run (config, parameter counts, test metrics, costs, provenance) for analysis elsewhere;
    or every done run logged to MLflow or TensorBoard."""
    from vlbench.export import EXPORT_FORMATS, export_runs
    from vlbench.trackers import TRACKERS

    if fmt in TRACKERS:
        db_export_to_tracker(fmt, out, sweep_name, mlflow_uri, db)
        return
    try:
        if fmt not in EXPORT_FORMATS:
            formats = ", ".join((*EXPORT_FORMATS, *TRACKERS))
            raise UserError(f"--format: unknown format '{fmt}' (choose from {formats})")
        if mlflow_uri is not None:
            raise UserError("--mlflow-uri goes with --format mlflow")
        target = out or project_folder(REPORTS_DIR, "reports") / "export" / f"runs.{fmt}"
        if target.is_dir():
            raise UserError(f"--out: {target} is a folder; give a file name")
        if target.suffix == ".db" or target.name.startswith("vlbench.db"):
            raise UserError(f"--out: {target} looks like a database; the export is not written over one")
        store = open_store(db, reading=True)
        try:
            n = export_runs(store, target, fmt, sweep_name)
        except OSError as e:
            raise UserError(f"--out: cannot write {target}: {e.strerror or e}") from e
    except UserError as e:
        fail(str(e))
    console.print(f"{n} run(s) written to {target}")


def db_export_to_tracker(name: str, out: Path | None, sweep_name: str | None, mlflow_uri: str | None, db: str | None) -> None:
    """`db export --format mlflow|tensorboard`: every done run logged to the tracker, as `sweep --log-to` does."""
    from vlbench.trackers import default_mlflow_uri, log_runs

    try:
        if out is not None:
            raise UserError(f"--out: --format {name} logs to {'MLflow (--mlflow-uri)' if name == 'mlflow' else 'the run folders'}, not to a file")
        if mlflow_uri is not None and name != "mlflow":
            raise UserError("--mlflow-uri goes with --format mlflow")
        summary = log_runs(open_store(db, reading=True), name, mlflow_uri or default_mlflow_uri(RUNS_DIR), sweep_name)
    except UserError as e:
        fail(str(e))
    console.print(f"{summary.logged} run(s) logged to {name}" + (f", {summary.already} already there" if summary.already else ""))
    for label, reason in summary.failed:
        err_console.print(f"[red]failed[/red] {escape(label)}: {escape(reason)}", highlight=False)
    if summary.failed:
        raise typer.Exit(1)


@db_app.command("rebuild")
def db_rebuild(
    source: Path = typer.Option(RUNS_DIR, "--from", help="the runs folder whose run folders (run.json) are read"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
):
    """Recreate the database from the run folders (after a lost or corrupted database); runs already in
    the database are left as they are."""
    from vlbench.export import rebuild

    try:
        summary = rebuild(source, open_store(db))
    except UserError as e:
        fail(str(e))
    console.print(f"{summary.imported} run(s) imported, {summary.present} already in the database, from {source}")
    for path, problem in summary.unreadable:
        err_console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(problem)}", highlight=False)


@backbones_app.command("pretrain")
def backbones_pretrain(
    names: Optional[str] = typer.Option(None, help="comma-separated tiny backbones, e.g. tiny,tiny-t5 [default: all]"),
    out: Optional[Path] = typer.Option(None, help="folder to write them to [default: the package's vlbench/tiny_backbones]"),
):
    """Pretrain the tiny backbones by today's recipe and write them where the package ships them
    (run it after changing the recipe; a shipped copy made by another recipe is not used)."""
    from rich.progress import Progress

    from vlbench.pretrain import pretrain_shipped

    try:
        with Progress(console=err_console, transient=True) as progress:
            made = pretrain_shipped(csv_list(names, "--names"), out, progress)
    except UserError as e:
        fail(str(e))
    for m in made:
        console.print(f"{m['name']}: recipe {m['recipe_key']}, {m['mb']:.1f} MB in {m['folder']} ({m['seconds']:.0f}s)")


@app.command()
def bench(
    backbone: str = typer.Option("tiny", help="tiny or paper (CLIP RN101 + BART-base / T5-base), random weights"),
    lm: str = typer.Option("bart", help="language model: bart or t5"),
    methods: Optional[str] = typer.Option(
        None, help="comma-separated method[:sharing], e.g. full,proj-only,adapter:single [default: Table 1's rows + proj-only]"
    ),
    batch_size: int = typer.Option(16, help="training batch size"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    precision: str = typer.Option("fp32", help="fp32 or bf16 (autocast around the forward passes)"),
    steps: int = typer.Option(5, help="timed training steps per method"),
    warmup: int = typer.Option(2, help="untimed training steps before them"),
    parts: str = typer.Option(
        "training,decode,data,extract", help="comma-separated measurements to make (the others are null in the JSON)"
    ),
    fmt: str = typer.Option("markdown", "--format", help="what to print: markdown (a table in the terminal) or json"),
):
    """Measure training steps per method (time, memory, FLOPs, MFU), decoding, data reads and CLIP
    extraction on this device; written to reports/bench/<device>-<backbone>-<precision>.{json,md}."""
    import json

    from vlbench.bench import FORMATS, BenchOptions, rich_table, render_markdown, run_bench, summary_lines, write_bench

    try:
        if fmt not in FORMATS:
            raise UserError(f"--format: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
        folder = project_folder(REPORTS_DIR, "reports") / "bench"
        options = BenchOptions(
            backbone=backbone, lm=lm, methods=csv_list(methods, "--methods"), batch_size=batch_size,
            device=device, precision=precision, steps=steps, warmup=warmup, parts=csv_list(parts, "--parts"),
        )  # fmt: skip
        result = run_bench(options, progress=lambda message: err_console.print(f"[dim]{escape(message)}[/dim]"))
        paths = write_bench(result, folder)
    except UserError as e:
        fail(str(e))
    if fmt == "json":
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif console.is_terminal:
        console.print(rich_table(result))
        for line in summary_lines(result):
            console.print(escape(line), highlight=False)
    else:
        print(render_markdown(result), end="")
    err_console.print(f"[dim]written to {' and '.join(map(str, paths))}[/dim]")
