"""GQA: relational questions about scenes of 2-4 shapes, scored by exact match.

Real data (GQA balanced, VL-T5 records `img_id`, `sent`, `question_id`, `label` {answer: score}):
trained on `GQA/train.json` + `GQA/valid.json`, tested on `GQA/testdev.json`, as the paper. As in
the reference code testdev is also the validation split: validation is only monitored (the test
score is the last epoch's), so it selects nothing.

Synthetic families (the example's answer_type):
- relate_shape: "what shape is left of the red circle?" (asked only when exactly one object is on that side)
- relate_color: "what color is the object right of the blue square?"
- verify_relation: "is the blue square left of the green circle?" (yes/no by a coin)
Objects are named by colour and shape, and only when that pair is unique in the scene. The answer
does not depend on the words of the question, so the text alone gives chance-level guesses.
"""

from __future__ import annotations

import random
from pathlib import Path

from vlbench.config import DataConfig, UserError
from vlbench.metrics import exact_match
from vlbench.tasks.base import Example, Task, check_unique, field, read_records, soft_label
from vlbench.tasks.scenes import Scene, SyntheticImageBank, random_scene

QUESTIONS_PER_IMAGE = 3
FAMILIES = ("relate_shape", "relate_color", "verify_relation")


def name(o) -> str:
    return f"{o.color} {o.shape}"


def candidate_questions(scene: Scene) -> dict[str, list[tuple[str, str]]]:
    """family -> the (question, answer) pairs this scene supports."""
    objects = scene.objects
    named = [i for i, o in enumerate(objects) if scene.count(shape=o.shape, color=o.color) == 1]
    found: dict[str, list[tuple[str, str]]] = {f: [] for f in FAMILIES}
    for i in named:
        # exactly one object on a side: the reference is second from that end
        for side, other in (("left", 0), ("right", len(objects) - 1)):
            if abs(i - other) == 1:
                found["relate_shape"].append((f"what shape is {side} of the {name(objects[i])}?", objects[other].shape))
                found["relate_color"].append(
                    (f"what color is the object {side} of the {name(objects[i])}?", objects[other].color)
                )
        for j in named:
            if i != j:
                left = "yes" if i < j else "no"  # objects are sorted left to right
                right = "no" if i < j else "yes"
                found["verify_relation"].append((f"is the {name(objects[i])} left of the {name(objects[j])}?", left))
                found["verify_relation"].append((f"is the {name(objects[i])} right of the {name(objects[j])}?", right))
    return found


class GQATask(Task):
    metric_name = "exact_match"
    name = "gqa"
    prefix = "gqa: "
    decode = "greedy"
    max_target_tokens = 4
    files = {"train": ("GQA/train.json", "GQA/valid.json"), "val": ("GQA/testdev.json",), "test": ("GQA/testdev.json",)}

    def image_questions(self, rng: random.Random) -> tuple[Scene, list[tuple[str, str, str]]]:
        scene = random_scene(rng, min_objects=2)
        found = candidate_questions(scene)
        while not found["verify_relation"]:  # need at least two nameable objects
            scene = random_scene(rng, min_objects=2)
            found = candidate_questions(scene)
        questions: list[tuple[str, str, str]] = []
        for _ in range(20):  # a few tries to find distinct questions
            if len(questions) == QUESTIONS_PER_IMAGE:
                break
            family = rng.choice([f for f in FAMILIES if found[f]])
            pool = found[family]
            if family == "verify_relation":
                wanted = rng.choice(["yes", "no"])  # both answers exist: each pair is asked both ways
                pool = [q for q in pool if q[1] == wanted]
            question, answer = rng.choice(pool)
            if question not in {q[0] for q in questions}:
                questions.append((question, answer, family))
        return scene, questions

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticImageBank) -> list[Example]:
        n = getattr(data, f"n_{split}")
        rng = random.Random(f"gqa-{split}-{data.seed}")
        examples: list[Example] = []
        n_images = 0
        while len(examples) < n:
            scene, questions = self.image_questions(rng)
            image_id = bank.add(f"gqa-{split}-img{n_images:05d}", scene)
            n_images += 1
            for question, answer, family in questions[: n - len(examples)]:
                examples.append(
                    Example(
                        uid=f"gqa-{split}-{len(examples):05d}",
                        task=self.name,
                        image_ids=(image_id,),
                        text=question,
                        targets=(answer,),
                        target_scores=None,
                        answers=(answer,),
                        answer_type=family,
                    )
                )
        return examples

    def load(self, root: Path, split: str) -> list[Example]:
        paths = self.paths(root, split)
        examples = []
        for path in paths:
            for i, record in enumerate(read_records(path)):
                where = f"{path}: record {i}"
                img_id = field(where, record, "img_id", "a string")
                question_id = field(where, record, "question_id", "a string or an integer")
                text = field(where, record, "sent", "a string")
                targets, scores = soft_label(where, record)
                if not targets and split != "train":  # training on it is a no-op (weight 0); scoring needs an answer
                    raise UserError(f"{where}: bad label: no answer to score against")
                examples.append(
                    Example(
                        uid=str(question_id),
                        task=self.name,
                        image_ids=(img_id,),
                        text=text,
                        targets=targets,
                        target_scores=scores,
                        answers=targets[:1],
                    )
                )
        check_unique(examples, " + ".join(map(str, paths)), "question_id")
        return examples

    def metric(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        scores = {"score": exact_match(predictions, [e.answers[0] for e in examples])}
        for family in sorted({e.answer_type for e in examples} - {""}):  # real GQA records have no family
            pairs = [(p, e.answers[0]) for e, p in zip(examples, predictions) if e.answer_type == family]
            scores[family] = exact_match([p for p, _ in pairs], [a for _, a in pairs])
        return scores
