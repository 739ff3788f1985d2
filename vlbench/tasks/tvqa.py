"""TVQA: multiple-choice questions (5 candidates) on TV show clips, with their subtitles; accuracy.

Real data: VALUE's `video/ann/tvqa/tvqa_{train,val,test_public}.jsonl` (the paper reports test-public),
the subtitles `video/ann/tv_subtitles.jsonl`, the frames `video/vis_features/tv/clip-vit/` (shared with TVC).

Synthetic: two or three people each own a shape of a different form, and say which in the subtitles
("tom: my shape is the circle."); the question asks the colour of one person's shape; the candidates
are five colours, always in the same order. The asked colour is drawn uniformly, so the text alone is
at chance (1 in 5): the subtitles say which shape to look for, the frames (some of them: shapes come
and go) show its colour.
"""

from __future__ import annotations

import random

from vlbench.config import DataConfig
from vlbench.tasks.base import Example
from vlbench.tasks.scenes import COLORS, SHAPES
from vlbench.tasks.video import EVENTS, NAMES, SyntheticClipBank, VideoQATask, qa_text, random_clip

ANSWERS = ("red", "green", "blue", "yellow", "purple")


class TVQATask(VideoQATask):
    name = "tvqa"
    prefix = "tvqa: "
    n_choices = 5
    files = {
        "train": ("video/ann/tvqa/tvqa_train.jsonl",),
        "val": ("video/ann/tvqa/tvqa_val.jsonl",),
        "test": ("video/ann/tvqa/tvqa_test_public.jsonl",),
    }
    subtitles = "video/ann/tv_subtitles.jsonl"
    frames = "video/vis_features/tv/clip-vit"

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticClipBank) -> list[Example]:
        rng = random.Random(f"tvqa-{split}-{data.seed}")
        examples = []
        for i in range(getattr(data, f"n_{split}")):
            answer = rng.randrange(len(ANSWERS))
            shapes = rng.sample(SHAPES, rng.randint(2, 3))
            kinds = [(ANSWERS[answer], shapes[0])] + [(rng.choice(list(COLORS)), shape) for shape in shapes[1:]]
            clip = random_clip(rng, [rng.choice(EVENTS) for _ in kinds], kinds=kinds)
            clip_id = bank.add(f"tvqa-{split}-clip{i:05d}", clip)
            owners = rng.sample(NAMES, len(shapes))
            lines = [f"{name}: my shape is the {shape}." for name, shape in zip(owners, shapes)]
            rng.shuffle(lines)
            text = qa_text(lines, f"what color was {owners[0]}'s shape?", clip.ts, ANSWERS)
            examples.append(self.example(f"tvqa-{split}-{i:05d}", clip_id, text, answer))
        return examples
