"""Trained runs that load back: `vlbench evaluate RUN`.

    find_run(store, run, sweep) -> RunRecord            a run key, or a label as `vlbench status` prints it
    load_trainable(model, cfg, path)                    trainable.safetensors into a rebuilt model, as its method loads it
    evaluate_run(store, run, ...) -> RunEvaluation      rebuild, load, evaluate (and write prediction files)
    rescore_run(store, record, today, changed)          re-score the test split after a metric change (sweep --rescore)
    write_predictions(folder, cfg, data, split, preds)  each task's predictions in its official format

A done run's folder (`runs/<sweep>/<key>/`) holds its resolved `config.json` and its trained weights
`trainable.safetensors` (every trainable parameter, nothing else). The model is rebuilt exactly as
the sweep built it (the same seeded `sweep.build_model` on the backbones of the runs folder's cache),
the saved tensors replace its trainable parameters, and the one engine evaluates it on the run's own
data (`sweep.task_data`): on CPU the test split reproduces the stored test metrics exactly.

Prediction files (`--predictions-out DIR`, one per task, `<task>_<split>.{json,csv}`) are what
`vlbench eval` and the official tools read: VQA `[{"question_id", "answer"}]`, COCO captions
`[{"image_id", "caption"}]`, GQA `[{"questionId", "prediction"}]`, NLVR2 `identifier,prediction`
lines (prediction `True`/`False`, as NLVR2's labels are written), the video tasks `[{"id", "prediction"}]`. The ids on real data
are the datasets' own: VQA's integer question_id, the COCO image id (`cocoid`, the digits that end
the image file's name), GQA's questionId, NLVR2's identifier, the video records' qid / clip_id. The
synthetic suites have no such ids: there each example's uid stands in for it, as a string
(`vqa-test-00003`, `caption-test-00003`, ...); no official annotation file knows them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlbench.baselines import is_baseline
from vlbench.config import RunConfig, UserError
from vlbench.files import atomic_write
from vlbench.store import RunRecord, Store

SPLITS = ("val", "test")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "trainable.safetensors"
EVALUABLE = ("done", "superseded")  # superseded: done, by code that has changed since (its files are kept)


@dataclass
class RunEvaluation:
    run: RunRecord
    split: str
    scores: dict[str, dict[str, float]]  # {task: {metric: value}}, fractions as the tasks score them
    prediction_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the user (what produced the run changed)

    def scaled(self) -> dict[str, dict[str, float]]:
        """The scores x100, the scale of `vlbench report` (accuracy %, CIDEr x100)."""
        return {task: {name: 100 * value for name, value in metrics.items()} for task, metrics in self.scores.items()}


def find_run(store: Store, run: str, sweep: str | None = None) -> RunRecord:
    """The run whose key is `run`, else the one whose label is `run` (in `sweep` when given; a label
    of superseded runs only is found by key). A UserError when none or several match."""
    records = store.runs(sweep=sweep)
    by_key = [r for r in records if r.key == run]
    if by_key:
        return by_key[0]
    labelled = [r for r in records if r.label == run]
    current = [r for r in labelled if r.status != "superseded"]
    where = f" in sweep {sweep}" if sweep is not None else ""
    if len(current) == 1:
        return current[0]
    if len(current) > 1:
        sweeps = sorted({r.sweep for r in current})
        if len(sweeps) == len(current):
            raise UserError(f"run {run}: {len(current)} runs have this label, in sweeps {', '.join(sweeps)}; choose one with --sweep")
        raise UserError(f"run {run}: {len(current)} runs{where} have this label; give a key ({', '.join(r.key for r in current)})")
    if labelled:
        raise UserError(f"run {run}{where}: only superseded runs have this label; give a key ({', '.join(r.key for r in labelled)})")
    raise UserError(f"run {run}: no run{where} has this key or label (`vlbench status` lists them)")


def load_trainable(model, cfg: RunConfig, path: Path) -> None:
    """The tensors of a run's trainable.safetensors into `model`, as the run's method loads them
    (`Method.load`: strictly, a UserError naming the file and the tensor that does not fit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlbench.methods import get_method

    try:
        saved = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    get_method(cfg.method)(cfg).load(model, saved, str(path))


def run_files(record: RunRecord) -> tuple[Path, RunConfig]:
    """The run's folder and its config (config.json), checked: a UserError for a run that has none."""
    label = f"run {record.label} ({record.key})"
    if record.status not in EVALUABLE:
        raise UserError(f"{label} is {record.state}, not done: only a finished run has trained weights to evaluate")
    if is_baseline(record.method):
        raise UserError(f"{label} is the {record.method} baseline: no trained model to evaluate")
    if not record.run_dir:
        raise UserError(f"{label}: the database holds no run folder for it")
    folder = Path(record.run_dir)
    if not folder.is_dir():
        raise UserError(f"{label}: its run folder {folder} is missing")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing (the run folder of {record.label} holds no {name})")
    try:
        cfg = RunConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{folder / CONFIG_FILE}: not a run config ({type(e).__name__}: {e})") from None
    if cfg.key() != (record.superseded_of or record.key):
        raise UserError(f"{folder / CONFIG_FILE}: the config of run {cfg.key()}, not of {record.key}")
    return folder, cfg


def load_run(folder: Path, cfg: RunConfig, progress=None):
    """(model, data, device): the run's model rebuilt as the sweep built it, with its trained weights."""
    from vlbench import sweep as sweeps

    res = sweeps.build_resources(cfg, sweeps.cache_dir(sweeps.runs_dir_of(folder)), progress)
    model = sweeps.build_model(cfg, res.backbones)
    load_trainable(model, cfg, folder / WEIGHTS_FILE)
    data = sweeps.task_data(cfg, res, model)
    dev = sweeps.device()
    return model.to(dev), data, dev


def rescore_run(store: Store, record: RunRecord, today: dict[str, str], changed: str, progress=None) -> None:
    """Re-score a done run's test split with today's metrics (its predictions come from its trained
    model, as at the end of its training) and record the new scores and fingerprint in the store."""
    from vlbench.engine import evaluate

    folder, cfg = run_files(record)
    model, data, dev = load_run(folder, cfg, progress)
    store.rescore(record.key, evaluate(model, data, "test", cfg.optim, dev), today, changed)


def evaluate_run(
    store: Store,
    run: str,
    sweep: str | None = None,
    split: str = "test",
    predictions_out: Path | None = None,
    progress=None,
) -> RunEvaluation:
    """Rebuild a done run's model from its folder, load its trained weights, evaluate it on `split`
    and, with `predictions_out`, write each task's predictions there in its official format."""
    from vlbench.engine import predict, score
    from vlbench.fingerprint import first_difference, fingerprint

    if split not in SPLITS:
        raise UserError(f"--split: unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if predictions_out is not None and predictions_out.exists() and not predictions_out.is_dir():
        raise UserError(f"--predictions-out: {predictions_out} exists and is not a folder")
    record = find_run(store, run, sweep)
    folder, cfg = run_files(record)
    notes = []
    today = fingerprint(cfg)
    if record.fingerprint != today:
        notes.append(f"what produced this run has changed since ({first_difference(record.fingerprint, today)}): "
                     "its scores may differ from the stored ones")  # fmt: skip
    model, data, dev = load_run(folder, cfg, progress)
    predictions = predict(model, data, split, cfg.optim, dev)
    evaluation = RunEvaluation(record, split, score(data, split, predictions), notes=notes)
    if predictions_out is not None:
        evaluation.prediction_files = write_predictions(predictions_out, cfg, data, split, predictions)
    return evaluation


# ---- prediction files ---------------------------------------------------------------------------

COCO_NUMBER = re.compile(r"(\d+)$")  # COCO_val2014_000000391895 -> 391895, the COCO image id (cocoid)


def official_id(task: str, uid: str, synthetic: bool):
    """The id an official results file gives an example: the dataset's own, or the uid on synthetic data."""
    if synthetic:
        return uid
    if task == "vqa":
        return int(uid)
    if task == "caption":
        match = COCO_NUMBER.search(uid)
        if match is None:
            raise UserError(f"caption: image {uid!r} has no COCO image id at the end of its name")
        return int(match.group(1))
    return uid


def prediction_file(task: str, split: str, examples, predictions: dict[str, str], synthetic: bool) -> tuple[str, str]:
    """(file name, text) of one task's predictions, in the examples' order."""
    rows = [(official_id(task, e.uid, synthetic), predictions[e.uid]) for e in examples]
    if task == "nlvr":  # the NLVR2 evaluation script's predictions CSV
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows((uid, "True" if p == "true" else "False") for uid, p in rows)
        return f"{task}_{split}.csv", out.getvalue()
    keys = {"vqa": ("question_id", "answer"), "caption": ("image_id", "caption"), "gqa": ("questionId", "prediction")}
    id_key, text_key = keys.get(task, ("id", "prediction"))
    records = [{id_key: uid, text_key: p} for uid, p in rows]
    return f"{task}_{split}.json", json.dumps(records, indent=1, ensure_ascii=False) + "\n"


def write_predictions(folder: Path, cfg: RunConfig, data: dict, split: str, predictions: dict) -> list[Path]:
    """Each task's predictions on `split` in `folder` (made when missing), each file written atomically."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--predictions-out: cannot make {folder}: {e.strerror or e}") from None
    paths = []
    for task, d in data.items():
        name, text = prediction_file(task, split, d.split(split), predictions[task], cfg.data.source == "synthetic")
        path = folder / name
        try:
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as e:
            raise UserError(f"--predictions-out: cannot write {path}: {e.strerror or e}") from None
        paths.append(path)
    return paths


def scores_table(evaluation: RunEvaluation):
    """The scores as a rich table, x100: one row per task and metric, the main score first."""
    from rich.table import Table

    r = evaluation.run
    table = Table("task", "metric", "value", title=f"{r.label} ({r.sweep}, {r.key}): {evaluation.split} split, x100")
    table.columns[2].justify = "right"
    for task, metrics in evaluation.scaled().items():
        for name in sorted(metrics, key=lambda n: (n != "score", n)):
            table.add_row(task, name, f"{metrics[name]:.2f}")
    return table
