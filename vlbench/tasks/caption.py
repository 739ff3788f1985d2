"""COCO-style captioning: 5 references per image, trained one example per reference, CIDEr-D."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from vlbench.config import DataConfig
from vlbench.metrics import caption_scores
from vlbench.tasks.base import Example, Task
from vlbench.tasks.scenes import SyntheticImageBank, captions, random_scene


class CaptionTask(Task):
    name = "caption"
    prefix = "caption: "
    decode = "beam"
    max_target_tokens = 20

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticImageBank) -> list[Example]:
        rng = random.Random(f"caption-{split}-{data.seed}")
        examples = []
        for i in range(getattr(data, f"n_{split}")):
            scene = random_scene(rng)
            image_id = bank.add(f"caption-{split}-img{i:05d}", scene)
            references = tuple(captions(scene, rng))
            examples.append(
                Example(
                    uid=f"caption-{split}-{i:05d}",
                    task=self.name,
                    image_ids=(image_id,),
                    text="",
                    targets=references,
                    target_scores=None,
                    answers=references,
                )
            )
        return examples

    def train_items(self, examples: list[Example]) -> list[Example]:
        # the paper trains on one example per caption
        return [
            dataclasses.replace(e, uid=f"{e.uid}-ref{k}", targets=(reference,))
            for e in examples
            for k, reference in enumerate(e.targets)
        ]

    def metric(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        scores = caption_scores(
            {e.uid: p for e, p in zip(examples, predictions)}, {e.uid: list(e.answers) for e in examples}
        )
        return {"score": scores["CIDEr"], "CIDEr": scores["CIDEr"], "BLEU-4": scores["BLEU-4"]}

    def text_only_predictions(self, train: list[Example], test: list[Example]) -> dict[str, str]:
        """The most frequent training reference, for every image."""
        most_common = Counter(r for e in train for r in e.answers).most_common(1)[0][0]
        return {e.uid: most_common for e in test}
