"""The interface every image-text task implements.

An `Example` is one scored unit (a question, a statement, an image to caption). A `Task` knows:

- how the model sees an example: `input_text(example)` (prefix + text) and the example's
  `image_ids` (1 image, 2 for nlvr);
- how to build the synthetic suite: `synthetic(data, split, bank) -> list[Example]`, and how to
  read the real one: `load(root, split) -> list[Example]` from the VL-T5 preprocessed files under
  the data root (`files[split]`, layout in vlbench.tasks), every record checked: a missing or
  malformed file is a UserError naming the file, the record and what is wrong;
- how to train on it: `train_items(examples) -> list[Example]` lists the training items (captions:
  one item per reference caption, as the paper trains one example per caption; others: the
  examples themselves), and `sample_target(item, rng) -> (target, loss_weight)` gives the target
  for one visit of an item (vqa: an answer drawn proportionally to its soft score, weighted by
  that score, as VL-T5 does; others: the single target with weight 1);
- how to decode: `decode` is "greedy" (vqa, gqa), "beam" (caption) or "choice" (nlvr: compare the
  first-step logits of `choices`), with `max_target_tokens` words of budget;
- how to score: `score(examples, predictions)` -> {"score": main metric as a fraction, ...extras};
- the best text-only guess: `text_only_predictions(train, test)`, the blind baseline.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from vlbench.config import DataConfig, UserError
from vlbench.tasks.scenes import SyntheticImageBank


@dataclass(frozen=True)
class Example:
    uid: str  # unique within task and split, e.g. "vqa-train-00017"
    task: str
    image_ids: tuple[str, ...]
    text: str  # model input without the task prefix ("" for captions)
    targets: tuple[str, ...]  # training targets (vqa: distinct answers with nonzero score, best first)
    target_scores: tuple[float, ...] | None  # vqa: soft score of each target; None otherwise
    answers: tuple[str, ...]  # what scoring needs (vqa: the 10 annotator answers; caption: the references)
    answer_type: str = ""  # vqa: yes/no | number | other; gqa: question family


class Task:
    name: str
    prefix: str
    decode: str
    # what produced a score, for the run's fingerprint: bump `version` when the task's examples
    # (generator or loader), targets or scoring change; `metric_name` names its metrics.VERSIONS entry
    version: int = 1
    metric_name: str = ""
    choices: tuple[str, ...] = ()
    images_per_example: int = 1
    max_target_tokens: int = 4
    max_input_tokens: int | None = None  # input ids past this are cut (video: 600, as the reference)

    def input_text(self, example: Example) -> str:
        return self.prefix + example.text

    files: dict[str, tuple[str, ...]] = {}  # real data: split -> its files under the data root

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticImageBank) -> list[Example]:
        raise NotImplementedError

    def load(self, root: Path, split: str) -> list[Example]:
        raise NotImplementedError

    def paths(self, root: Path, split: str) -> list[Path]:
        """The real-data files of `split` under `root`."""
        if split not in self.files:
            raise UserError(f"{self.name}: unknown split {split!r} (choose from {', '.join(self.files)})")
        return [Path(root) / name for name in self.files[split]]

    def data_files(self, root: Path) -> list[Path]:
        """Every real-data file the task reads under `root` (a run's fingerprint digests them)."""
        return list(dict.fromkeys(p for split in self.files for p in self.paths(root, split)))

    def train_items(self, examples: list[Example]) -> list[Example]:
        return list(examples)

    def sample_target(self, item: Example, rng) -> tuple[str, float]:
        """The target of one training visit. `rng` is anything with .random() (random.Random, numpy Generator)."""
        if item.target_scores is None:
            return item.targets[0], 1.0
        if not item.targets:  # no answer in the answer vocabulary: VL-T5 trains on "" with weight 0
            return "", 0.0
        u = rng.random() * sum(item.target_scores)
        for target, score in zip(item.targets, item.target_scores):
            u -= score
            if u < 0:
                return target, score
        return item.targets[-1], item.target_scores[-1]  # only reached through float rounding

    def score(self, examples: list[Example], predictions: dict[str, str]) -> dict[str, float]:
        missing = [e.uid for e in examples if e.uid not in predictions]
        if missing:
            raise ValueError(f"{self.name}: no prediction for {missing[0]} ({len(missing)} missing)")
        return self.metric(examples, [predictions[e.uid] for e in examples])

    def metric(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def text_only_predictions(self, train: list[Example], test: list[Example]) -> dict[str, str]:
        """The most frequent training answer for the identical input text, else the most frequent overall."""
        by_text: dict[str, Counter] = defaultdict(Counter)
        for example in train:
            if example.targets:
                by_text[example.text][example.targets[0]] += 1
        overall = sum(by_text.values(), Counter())
        fallback = overall.most_common(1)[0][0]
        return {
            e.uid: by_text[e.text].most_common(1)[0][0] if e.text in by_text else fallback for e in test
        }


# ---- reading the real files ---------------------------------------------------------------------

JSON_TYPES = {
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a string or an integer": lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
}


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return next(name for name, is_type in JSON_TYPES.items() if is_type(value))


def read_json(path: Path):
    """The parsed content of a data file; a UserError naming the file if it is missing, empty or not JSON."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    if not text.strip():
        raise UserError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None


def read_records(path: Path) -> list[dict]:
    """A data file holding a non-empty JSON list of objects (the VL-T5 preprocessed format)."""
    records = read_json(path)
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of records, got {json_type(records)}")
    if not records:
        raise UserError(f"{path}: no records")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {i} should be an object, got {json_type(record)}")
    return records


def field(where: str, record: dict, name: str, kind: str):
    """record[name], checked to be of JSON type `kind` (a key of JSON_TYPES); `where` names the record."""
    if name not in record:
        raise UserError(f"{where}: missing field {name!r}")
    value = record[name]
    if not JSON_TYPES[kind](value):
        raise UserError(f"{where}: field {name!r} should be {kind}, got {json_type(value)}")
    return value


def soft_label(where: str, record: dict) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """A VQA/GQA `label` {answer: score} as (answers, scores), best first; zero scores are never drawn."""
    label = field(where, record, "label", "an object")
    for answer, score in label.items():
        if not JSON_TYPES["a number"](score) or not 0 <= score <= 1:
            raise UserError(f"{where}: bad label: the score of {answer!r} should be a number in [0, 1], got {score!r}")
    ranked = sorted((item for item in label.items() if item[1] > 0), key=lambda item: -item[1])
    return tuple(a for a, _ in ranked), tuple(float(s) for _, s in ranked)


def check_unique(examples: list[Example], where: str, what: str) -> None:
    """Example uids key the predictions: a repeated one would silently merge two examples."""
    seen = set()
    for e in examples:
        if e.uid in seen:
            raise UserError(f"{where}: {what} {e.uid!r} appears twice")
        seen.add(e.uid)
