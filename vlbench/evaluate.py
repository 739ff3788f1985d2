"""Scoring prediction files against official annotation files (`vlbench eval vqa|caption`).

This module reads and checks the files; the scores come from vlbench.metrics. Every problem with
a file is a UserError naming the file and what is wrong, so a score is never computed on inputs
that do not say exactly which questions or images are being scored:

- VQA: the questions scored are those of the annotation file, or of `questions` when given (a
  subset, such as the Karpathy test split of val2014). Each must have exactly one prediction, and
  a prediction for any other question is an error: the official `vqa.loadRes` asserts the same
  set equality between results and annotations.
- Captions: the images scored are those of a COCO captions file, or the images of one split of a
  Karpathy `dataset_coco.json` (image id = `cocoid`, the COCO image id, so the same predictions
  score against either file). Each must have exactly one prediction and no other image may have
  one. (The official COCO caption evaluation instead scores whichever images the results name;
  here a subset must be explicit, because CIDEr's document frequencies depend on the set scored.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vlbench.config import UserError
from vlbench.metrics import caption_scores, vqa_accuracy, vqa_official_accuracy
from vlbench.tasks.base import field, json_type, read_json
from vlbench.tasks.vqa import VQAAnnotation, read_annotations

TOKENIZERS = {
    "ptb": "PTB tokenizer (Stanford CoreNLP, Java)",
    "simple": "pure-Python tokenizer (vlbench.metrics.simple_tokenize, no Java)",
}
KARPATHY_DEFAULT_SPLIT = "test"


# ---- checking records (reading and field checks are the data loaders', in vlbench.tasks.base) ----


def get(value: Any, name: str, kind: str, where: str) -> Any:
    """value[name] of JSON type `kind` ("a string", "an integer", "a list", ...); `where` names value."""
    if not isinstance(value, dict):
        raise UserError(f"{where} should be an object, got {json_type(value)}")
    return field(where, value, name, kind)


def non_empty_list(value: Any, where: str, what: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"{where} should be a list of {what}, got {json_type(value)}")
    if not value:
        raise UserError(f"{where} is an empty list (no {what})")
    return value


def unique_ids(path: Path, placed: list[tuple[str, Any]], key: str) -> list[int]:
    """The integer `key` of each (location, record) of the file `path`, in order; an id seen twice is an error."""
    seen: dict[int, str] = {}
    for location, value in placed:
        rid = get(value, key, "an integer", f"{path}: {location}")
        if rid in seen:
            raise UserError(f"{path}: {location}: {key} {rid} appears twice (also in {seen[rid]})")
        seen[rid] = location
    return list(seen)


def read_predictions(path: Path, key: str, text_key: str) -> dict[int, str]:
    """A results file [{key: int, text_key: str}, ...] -> {id: text}, one record per id."""
    records = read_json(path)
    if not isinstance(records, list):
        raise UserError(f'{path}: should be a list of {{"{key}", "{text_key}"}} records, got {json_type(records)}')
    if not records:
        raise UserError(f"{path}: no predictions (an empty list)")
    placed = [(f"[{i}]", r) for i, r in enumerate(records)]
    ids = unique_ids(path, placed, key)
    return {rid: field(f"{path}: {location}", r, text_key, "a string") for rid, (location, r) in zip(ids, placed)}


def check_coverage(predicted: dict, expected: list, path: Path, key: str, source: str) -> None:
    """Exactly one prediction per expected id, none for any other id."""
    wanted = set(expected)
    unknown = [rid for rid in predicted if rid not in wanted]
    if unknown:
        raise UserError(f"{path}: {len(unknown)} prediction(s) for ids not in {source} (e.g. {key} {unknown[0]})")
    missing = [rid for rid in expected if rid not in predicted]
    if missing:
        raise UserError(
            f"{path}: no prediction for {len(missing)} of the {len(expected)} ids in {source} (e.g. {key} {missing[0]})"
        )


# ---- VQA ----------------------------------------------------------------------------------------


def read_question_ids(path: Path, annotations: dict[int, VQAAnnotation], annotations_path: Path) -> set[int]:
    """The question ids of an official questions file ({"questions": [...]}) or of a list of records
    with "question_id" (the VL-T5 / VL-Adapter split files, e.g. karpathy_test.json)."""
    data = read_json(path)
    if isinstance(data, dict) and "questions" in data:
        records = non_empty_list(data["questions"], f"{path}: questions", "questions")
        ids = unique_ids(path, [(f"questions[{i}]", q) for i, q in enumerate(records)], "question_id")
    elif isinstance(data, list):
        records = non_empty_list(data, f"{path}", "questions")
        ids = unique_ids(path, [(f"[{i}]", q) for i, q in enumerate(records)], "question_id")
    else:
        raise UserError(f"{path}: should be an object with a 'questions' list, or a list of records with 'question_id'")
    unknown = [qid for qid in ids if qid not in annotations]
    if unknown:
        raise UserError(f"{path}: {len(unknown)} question_id(s) not in {annotations_path} (e.g. {unknown[0]})")
    return set(ids)


def evaluate_vqa(predictions: Path, annotations: Path, questions: Path | None = None, progress=None) -> dict:
    """VQA accuracy as the official vqaEval.py reports it (x100, 2 decimals), overall and per answer
    type, and the number of questions scored."""
    predictions, annotations = Path(predictions), Path(annotations)
    gold = read_annotations(annotations)  # checked and in file order, as vlbench.tasks.vqa reads it
    ids, source = list(gold), str(annotations)  # file order: the order in which the script sums
    if questions is not None:
        wanted = read_question_ids(Path(questions), gold, annotations)
        ids, source = [qid for qid in ids if qid in wanted], str(questions)
    answers = read_predictions(predictions, "question_id", "answer")
    check_coverage(answers, ids, predictions, "question_id", source)

    task = progress.add_task("VQA accuracy", total=len(ids)) if progress is not None else None
    accuracies = []
    for n, qid in enumerate(ids, 1):
        accuracies.append(vqa_accuracy(answers[qid], gold[qid].answers))
        if task is not None and (n % 5000 == 0 or n == len(ids)):
            progress.update(task, completed=n)
    scores = vqa_official_accuracy(accuracies, [gold[qid].answer_type for qid in ids])
    return {**scores, "questions": len(ids)}


# ---- captions -----------------------------------------------------------------------------------


def read_caption_references(path: Path, split: str | None) -> tuple[dict[int, list[str]], str]:
    """image id -> reference captions, from COCO captions format or a Karpathy dataset_coco.json
    (the images of `split`, default test), and a name for the set scored, for messages."""
    data = read_json(path)
    if isinstance(data, dict) and "annotations" in data:
        if split is not None:
            raise UserError(f"--split: {path} is in COCO captions format, which has no splits (--split is for a "
                            "Karpathy dataset_coco.json)")
        annotations = non_empty_list(data["annotations"], f"{path}: annotations", "captions")
        references: dict[int, list[str]] = {}
        for i, ann in enumerate(annotations):
            where = f"{path}: annotations[{i}]"
            references.setdefault(get(ann, "image_id", "an integer", where), []).append(
                get(ann, "caption", "a string", where)
            )
        return references, str(path)
    if isinstance(data, dict) and "images" in data:
        split = split or KARPATHY_DEFAULT_SPLIT
        images = non_empty_list(data["images"], f"{path}: images", "images")
        chosen = [
            (f"images[{i}]", image)
            for i, image in enumerate(images)
            if get(image, "split", "a string", f"{path}: images[{i}]") == split
        ]
        if not chosen:
            present = ", ".join(sorted({image["split"] for image in images}))
            raise UserError(f"{path}: no images in split '{split}' (splits present: {present})")
        references = {}
        for image_id, (location, image) in zip(unique_ids(path, chosen, "cocoid"), chosen):
            where = f"{path}: {location}"
            sentences = non_empty_list(get(image, "sentences", "a list", where), f"{where}: sentences", "captions")
            references[image_id] = [get(s, "raw", "a string", f"{where}: sentences[{k}]") for k, s in enumerate(sentences)]
        return references, f"the '{split}' split of {path}"
    raise UserError(f"{path}: neither COCO captions format (an object with an 'annotations' list) nor a Karpathy "
                    "dataset_coco.json (an object with an 'images' list)")


def evaluate_captions(predictions: Path, references: Path, split: str | None = None, tokenizer: str = "auto") -> dict:
    """CIDEr (pycocoevalcap's CIDEr-D, unscaled) and BLEU-4 over the whole set at once, the tokenizer
    used, and the number of images scored. tokenizer: auto (ptb when java is on PATH), ptb, simple."""
    if tokenizer not in ("auto", *TOKENIZERS):
        raise UserError(f"--tokenizer: unknown tokenizer '{tokenizer}' (choose from auto, {', '.join(TOKENIZERS)})")
    if tokenizer == "ptb" and shutil.which("java") is None:
        raise UserError("--tokenizer: ptb needs java on PATH (use auto or simple)")
    predictions = Path(predictions)
    gold, source = read_caption_references(Path(references), split)
    captions = read_predictions(predictions, "image_id", "caption")
    check_coverage(captions, list(gold), predictions, "image_id", source)
    return {**caption_scores(captions, gold, tokenizer), "images": len(gold)}
