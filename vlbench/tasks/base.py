"""The interface every image-text task implements.

An `Example` is one scored unit (a question, a statement, an image to caption). A `Task` knows:

- how the model sees an example: `input_text(example)` (prefix + text) and the example's
  `image_ids` (1 image, 2 for nlvr);
- how to build the synthetic suite: `synthetic(data, split, bank) -> list[Example]`;
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

from collections import Counter, defaultdict
from dataclasses import dataclass

from vlbench.config import DataConfig
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
    choices: tuple[str, ...] = ()
    images_per_example: int = 1
    max_target_tokens: int = 4

    def input_text(self, example: Example) -> str:
        return self.prefix + example.text

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticImageBank) -> list[Example]:
        raise NotImplementedError

    def train_items(self, examples: list[Example]) -> list[Example]:
        return list(examples)

    def sample_target(self, item: Example, rng) -> tuple[str, float]:
        """The target of one training visit. `rng` is anything with .random() (random.Random, numpy Generator)."""
        if item.target_scores is None:
            return item.targets[0], 1.0
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
            by_text[example.text][example.targets[0]] += 1
        overall = sum(by_text.values(), Counter())
        fallback = overall.most_common(1)[0][0]
        return {
            e.uid: by_text[e.text].most_common(1)[0][0] if e.text in by_text else fallback for e in test
        }
