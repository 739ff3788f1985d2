"""TVQA: multiple-choice questions (5 candidates) on TV show clips, with their subtitles; accuracy.

Real data: VALUE's `video/ann/tvqa/tvqa_{train,val,test_public}.jsonl` (the paper reports test-public),
the subtitles `video/ann/tv_subtitles.jsonl`, the frames `video/vis_features/tv/clip-vit/` (shared with TVC).

Synthetic: the subtitles tell who owns each shape ("tom: the red circle is mine."), the question asks
what one owner's shape did ("what did tom's shape do?"), and the candidates are the five events, in a
random order. The asked shape's event is drawn uniformly and the other shapes do other things, so
the text alone is at chance (1 in 5): the subtitles say which shape to watch, the frames what it did.
"""

from __future__ import annotations

import random

from vlbench.config import DataConfig
from vlbench.tasks.base import Example
from vlbench.tasks.video import (
    EVENTS,
    SyntheticClipBank,
    VideoQATask,
    distinct_events,
    owner_lines,
    qa_text,
    random_clip,
)


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
            clip = random_clip(rng, distinct_events(rng, rng.choice(list(EVENTS)), rng.randint(2, 3)))
            clip_id = bank.add(f"tvqa-{split}-clip{i:05d}", clip)
            lines, owners = owner_lines(rng, clip)
            asked = clip.tracks[0]
            choices = [f"it {past}" for past in EVENTS.values()]
            rng.shuffle(choices)
            text = qa_text(lines, f"what did {owners[asked]}'s shape do?", clip.ts, choices)
            answer = choices.index(f"it {EVENTS[asked.event]}")
            examples.append(self.example(f"tvqa-{split}-{i:05d}", clip_id, text, answer))
        return examples
