"""VQA: attribute, count and presence questions with 10 annotator answers and soft scores.

Real data (VQAv2, Karpathy splits): the VL-T5 records `vqa/karpathy_{train,val,test}.json`
(`img_id`, `sent`, `question_id`, `label` {answer: soft score}) give the questions and the training
targets. Scoring needs the 10 annotator answers, which `label` lacks: val and test questions read
them (and the answer type) from the official `vqa/v2_mscoco_{train,val}2014_annotations.json`, the
file named by the image's COCO subset. Training questions carry no annotator answers (never scored).

Synthetic: each image gets 3 questions. The first decides how the scene is built (count questions pick the
answer 0..4 uniformly and then build a scene with that many of the shape; presence questions
pick yes/no by a coin), so answers given the question text alone stay near uniform. The other
two are attribute or presence questions about the finished scene, again balanced by a coin.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlbench.config import DataConfig, UserError
from vlbench.metrics import vqa_accuracy, vqa_score_summary
from vlbench.tasks.base import (
    Example,
    Task,
    check_unique,
    field,
    json_type,
    read_json,
    read_records,
    soft_label,
)
from vlbench.tasks.scenes import (
    COLORS,
    KINDS,
    MAX_OBJECTS,
    SHAPES,
    Scene,
    SyntheticImageBank,
    place,
    random_kinds,
    random_scene,
)

QUESTIONS_PER_IMAGE = 3
N_ANNOTATORS = 10
ANNOTATIONS = "vqa/v2_mscoco_{subset}_annotations.json"
COCO_IMAGE = re.compile(r"COCO_(train2014|val2014)_0*(\d+)")  # VL-T5's image id: the file stem


def soft_score(count: int) -> float:
    """VL-T5/LXMERT label score of an answer given by `count` of the 10 annotators."""
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(count, 1.0)


def count_question(rng: random.Random) -> tuple[Scene, str, str, str]:
    answer = rng.randint(0, MAX_OBJECTS)
    shape = rng.choice(SHAPES)
    n_objects = rng.randint(max(answer, 1), MAX_OBJECTS)
    others = [k for k in KINDS if k[1] != shape]
    kinds = [(rng.choice(list(COLORS)), shape) for _ in range(answer)]
    kinds += [rng.choice(others) for _ in range(n_objects - answer)]
    return place(rng, kinds), f"how many {shape}s are there?", str(answer), "number"


def presence_question(
    rng: random.Random, answer: str, scene: Scene | None = None, asked: frozenset[str] = frozenset()
) -> tuple[Scene, str, str, str] | None:
    """The yes/no question "is there a <colour> <shape>?" with the given answer, not among `asked`.

    Builds a scene when none is given; None when the scene cannot give that answer anew.
    """
    if scene is None:
        kind = rng.choice(KINDS)
        n_objects = rng.randint(1, MAX_OBJECTS)
        if answer == "yes":
            scene = place(rng, [kind] + random_kinds(rng, n_objects - 1))
        else:
            scene = place(rng, random_kinds(rng, n_objects, exclude=(kind,)))
    else:
        present = {(o.color, o.shape) for o in scene.objects}
        kinds = [
            k for k in KINDS if (k in present) == (answer == "yes") and f"is there a {k[0]} {k[1]}?" not in asked
        ]
        if not kinds:
            return None
        kind = rng.choice(kinds)
    return scene, f"is there a {kind[0]} {kind[1]}?", answer, "yes/no"


def attribute_questions(scene: Scene) -> list[tuple[str, str]]:
    """(question, answer) about objects singled out by a unique shape or a unique colour."""
    questions = []
    for o in scene.objects:
        if scene.count(shape=o.shape) == 1:
            questions.append((f"what color is the {o.shape}?", o.color))
        if scene.count(color=o.color) == 1:
            questions.append((f"what shape is the {o.color} object?", o.shape))
    return questions


def wrong_answers(answer: str, answer_type: str) -> list[str]:
    """Plausible mistakes an annotator could make."""
    if answer_type == "yes/no":
        return ["no" if answer == "yes" else "yes"]
    if answer_type == "number":
        return [str(n) for n in (int(answer) - 1, int(answer) + 1) if 0 <= n <= MAX_OBJECTS]
    pool = list(COLORS) if answer in COLORS else list(SHAPES)
    return [a for a in pool if a != answer]


def annotate(answer: str, answer_type: str, rng: random.Random) -> list[str]:
    """10 annotator answers: usually unanimous, sometimes 1-3 plausible mistakes."""
    answers = [answer] * N_ANNOTATORS
    n_wrong = rng.choices([0, 1, 2, 3], weights=[70, 15, 10, 5])[0]
    for i in rng.sample(range(N_ANNOTATORS), n_wrong):
        answers[i] = rng.choice(wrong_answers(answer, answer_type))
    return answers


class VQATask(Task):
    metric_name = "vqa_accuracy"
    name = "vqa"
    prefix = "vqa: "
    decode = "greedy"
    max_target_tokens = 4
    files = {split: (f"vqa/karpathy_{split}.json",) for split in ("train", "val", "test")}

    def data_files(self, root: Path) -> list[Path]:
        """The Karpathy files and the official annotation files scoring reads answers from."""
        official = [Path(root) / ANNOTATIONS.format(subset=s) for s in ("train2014", "val2014")]
        return super().data_files(root) + [p for p in official if p.is_file()]

    def image_questions(self, rng: random.Random, yes_no: Counter) -> tuple[Scene, list[tuple[str, str, str]]]:
        """One scene and its (question, answer, answer_type) triples, all distinct questions.

        `yes_no` counts the presence answers given so far; each new presence question takes the
        answer that is behind, because a small scene has few "yes" questions and many "no" ones.
        """

        def wanted_answer() -> str:
            if yes_no["yes"] == yes_no["no"]:
                return rng.choice(["yes", "no"])
            return "yes" if yes_no["yes"] < yes_no["no"] else "no"

        family = rng.choices(["count", "presence", "attribute"], weights=[2, 1, 1])[0]
        if family == "count":
            scene, question, answer, answer_type = count_question(rng)
        elif family == "presence":
            scene, question, answer, answer_type = presence_question(rng, wanted_answer())
            yes_no[answer] += 1
        else:
            scene = random_scene(rng)  # every scene has an attribute question: 1-object scenes at least
            while not attribute_questions(scene):
                scene = random_scene(rng)
            question, answer = rng.choice(attribute_questions(scene))
            answer_type = "other"
        questions = [(question, answer, answer_type)]
        for _ in range(20):  # a few tries to find distinct follow-up questions
            if len(questions) == QUESTIONS_PER_IMAGE:
                break
            asked = frozenset(q[0] for q in questions)
            attributes = [q for q in attribute_questions(scene) if q[0] not in asked]
            if attributes and rng.random() < 0.5:
                questions.append((*rng.choice(attributes), "other"))
            else:
                presence = presence_question(rng, wanted_answer(), scene, asked)
                if presence is not None:
                    questions.append(presence[1:])
                    yes_no[presence[2]] += 1
        return scene, questions

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticImageBank) -> list[Example]:
        n = getattr(data, f"n_{split}")
        rng = random.Random(f"vqa-{split}-{data.seed}")
        examples: list[Example] = []
        n_images = 0
        yes_no: Counter = Counter()
        while len(examples) < n:
            scene, questions = self.image_questions(rng, yes_no)
            image_id = bank.add(f"vqa-{split}-img{n_images:05d}", scene)
            n_images += 1
            for question, answer, answer_type in questions[: n - len(examples)]:
                answers = annotate(answer, answer_type, rng)
                counts = Counter(answers).most_common()  # most frequent first: targets[0] is the majority
                examples.append(
                    Example(
                        uid=f"vqa-{split}-{len(examples):05d}",
                        task=self.name,
                        image_ids=(image_id,),
                        text=question,
                        targets=tuple(a for a, _ in counts),
                        target_scores=tuple(soft_score(c) for _, c in counts),
                        answers=tuple(answers),
                        answer_type=answer_type,
                    )
                )
        return examples

    def load(self, root: Path, split: str) -> list[Example]:
        (path,) = self.paths(root, split)
        records = [(f"{path}: record {i}", record) for i, record in enumerate(read_records(path))]
        for where, record in records:
            field(where, record, "img_id", "a string")
            field(where, record, "question_id", "an integer")
            field(where, record, "sent", "a string")
        official = {} if split == "train" else official_answers(root, records)
        examples = []
        for where, record in records:
            targets, scores = soft_label(where, record)
            if split == "train":  # never scored: no annotator answers needed
                answers = ()
                answer_type = field(where, record, "answer_type", "a string") if "answer_type" in record else ""
            else:
                answers, answer_type = official[record["question_id"]]
            examples.append(
                Example(
                    uid=str(record["question_id"]),
                    task=self.name,
                    image_ids=(record["img_id"],),
                    text=record["sent"],
                    targets=targets,
                    target_scores=scores,
                    answers=answers,
                    answer_type=answer_type,
                )
            )
        check_unique(examples, str(path), "question_id")
        return examples

    def metric(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        accuracies = [vqa_accuracy(p, list(e.answers)) for e, p in zip(examples, predictions)]
        summary = vqa_score_summary(accuracies, [e.answer_type for e in examples])
        summary["score"] = summary.pop("overall")
        return summary


def official_answers(root: Path, records: list[tuple[str, dict]]) -> dict[int, tuple[tuple[str, ...], str]]:
    """question_id -> (the 10 annotator answers, answer type) from the official annotation files.

    `records` are (where, record) pairs; each image's COCO subset (train2014 / val2014, in its id)
    names the annotation file, whose entry for the question must be about the same image."""
    by_subset: dict[str, list[tuple[str, dict, int]]] = {}
    for where, record in records:
        match = COCO_IMAGE.fullmatch(record["img_id"])
        if match is None:
            raise UserError(
                f"{where}: img_id {record['img_id']!r} is not a COCO image id like COCO_val2014_000000123456"
            )
        by_subset.setdefault(match.group(1), []).append((where, record, int(match.group(2))))
    official = {}
    for subset, asked in sorted(by_subset.items()):
        path = Path(root) / ANNOTATIONS.format(subset=subset)
        annotations = read_annotations(path)
        for where, record, image_id in asked:
            question_id = record["question_id"]
            if question_id not in annotations:
                raise UserError(f"{path}: no annotation for question_id {question_id} ({where})")
            annotation = annotations[question_id]
            if annotation.image_id != image_id:
                raise UserError(
                    f"{path}: question_id {question_id} is annotated for image {annotation.image_id}, "
                    f"but {where} has img_id {record['img_id']!r}"
                )
            official[question_id] = (annotation.answers, annotation.answer_type)
    return official


@dataclass(frozen=True)
class VQAAnnotation:
    """One question of an official VQAv2 annotation file."""

    answers: tuple[str, ...]  # the 10 annotator answers, as written
    answer_type: str  # yes/no | number | other
    image_id: int  # the COCO image id


def read_annotations(path: Path) -> dict[int, VQAAnnotation]:
    """An official v2_mscoco_*_annotations.json -> question_id -> its annotation, in file order.

    Every entry is checked (one UserError naming the file and the entry): a unique integer
    question_id, exactly 10 answer records each with a string `answer` and none repeating an
    earlier one exactly, a string answer_type and an integer image_id."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: should be an object with an 'annotations' list (the official VQA annotation format), "
            f"got {json_type(data)}"
        )
    entries = field(str(path), data, "annotations", "a list")
    if not entries:
        raise UserError(f"{path}: no annotations (an empty 'annotations' list)")
    annotations: dict[int, VQAAnnotation] = {}
    seen: dict[int, str] = {}  # question_id -> where it first appears
    for j, entry in enumerate(entries):
        location = f"annotations[{j}]"
        where = f"{path}: {location}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} should be an object, got {json_type(entry)}")
        question_id = field(where, entry, "question_id", "an integer")
        if question_id in seen:
            raise UserError(f"{where}: question_id {question_id} appears twice (also in {seen[question_id]})")
        seen[question_id] = location
        answers = field(where, entry, "answers", "a list")
        if len(answers) != N_ANNOTATORS:
            raise UserError(f"{where}: expected {N_ANNOTATORS} annotator answers, got {len(answers)}")
        texts = []
        for k, answer in enumerate(answers):
            if not isinstance(answer, dict):
                raise UserError(f"{where}: answers[{k}] should be an object, got {json_type(answer)}")
            texts.append(field(f"{where}: answers[{k}]", answer, "answer", "a string"))
        # the official script leaves out one answer record at a time by comparing whole records, so
        # identical records (no distinct answer_id) would all be left out together: refuse them
        if len({repr(a.get("answer_id")) for a in answers}) < len(answers):
            for k in range(1, len(answers)):
                if answers[k] in answers[:k]:
                    raise UserError(
                        f"{where}: answers[{k}] repeats an earlier answer record exactly "
                        "(the official files give each answer a distinct answer_id)"
                    )
        annotations[question_id] = VQAAnnotation(
            tuple(texts),
            field(where, entry, "answer_type", "a string"),
            field(where, entry, "image_id", "an integer"),
        )
    return annotations
