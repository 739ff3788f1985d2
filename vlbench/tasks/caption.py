"""COCO-style captioning: 5 references per image, trained one example per reference, CIDEr-D.

Real data: Karpathy's `COCO/dataset_coco.json` (`images[]` with `filename`, `split` and
`sentences[].raw`). Splits as the paper: train = Karpathy train + restval, val, test. The image id
is the file name's stem (COCO_val2014_000000391895), as VL-T5 names its features; the references
are every sentence's `raw`, stripped.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

from vlbench.config import DataConfig, UserError
from vlbench.metrics import caption_scores
from vlbench.tasks.base import Example, Task, check_unique, field, json_type, read_json
from vlbench.tasks.scenes import SyntheticImageBank, captions, random_scene

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


class CaptionTask(Task):
    metric_name = "caption_scores"
    name = "caption"
    prefix = "caption: "
    decode = "beam"
    max_target_tokens = 20
    files = {split: ("COCO/dataset_coco.json",) for split in KARPATHY_SPLITS}

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

    def load(self, root: Path, split: str) -> list[Example]:
        (path,) = self.paths(root, split)
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected Karpathy's caption object with 'images', got {json_type(data)}")
        images = field(str(path), data, "images", "a list")
        examples = []
        for i, image in enumerate(images):
            where = f"{path}: images[{i}]"
            if not isinstance(image, dict):
                raise UserError(f"{where} should be an object, got {json_type(image)}")
            karpathy_split = field(where, image, "split", "a string")
            if karpathy_split not in ("train", "restval", "val", "test"):
                raise UserError(f"{where}: unknown split {karpathy_split!r} (train, restval, val or test)")
            image_id = Path(field(where, image, "filename", "a string")).stem
            sentences = field(where, image, "sentences", "a list")
            references = []
            for k, sentence in enumerate(sentences):
                if not isinstance(sentence, dict):
                    raise UserError(f"{where}: sentences[{k}] should be an object, got {json_type(sentence)}")
                references.append(field(f"{where}: sentences[{k}]", sentence, "raw", "a string").strip())
            if not references or not all(references):
                raise UserError(f"{where}: every image needs non-empty captions in sentences[].raw")
            if karpathy_split in KARPATHY_SPLITS[split]:
                examples.append(
                    Example(
                        uid=image_id,
                        task=self.name,
                        image_ids=(image_id,),
                        text="",
                        targets=tuple(references),
                        target_scores=None,
                        answers=tuple(references),
                    )
                )
        if not examples:
            raise UserError(f"{path}: no images with split {' or '.join(KARPATHY_SPLITS[split])}")
        check_unique(examples, str(path), "image")
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
