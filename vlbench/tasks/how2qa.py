"""How2QA: multiple-choice questions (4 candidates) on instructional YouTube clips with subtitles; accuracy.

Real data: VALUE's `video/ann/how2qa/how2qa_{train,val,test_public}_release.jsonl` (records as TVQA's,
four candidates), the subtitles `video/ann/how2_subtitles.jsonl`, the frames `video/vis_features/how2/clip-vit/`.

Synthetic: a narrator names an event ("narrator: look, something comes in."), the question asks which
shape it was, and the candidates are the clip's shapes and shapes not in it, shuffled. Every shape of
a clip does something different, so the frames alone leave two or three answers open and the text
alone all four (chance: 1 in 4).
"""

from __future__ import annotations

import random

from vlbench.config import DataConfig
from vlbench.tasks.base import Example
from vlbench.tasks.scenes import KINDS
from vlbench.tasks.video import EVENTS, SyntheticClipBank, VideoQATask, distinct_events, qa_text, random_clip


class How2QATask(VideoQATask):
    name = "how2qa"
    prefix = "how2qa: "
    n_choices = 4
    files = {
        "train": ("video/ann/how2qa/how2qa_train_release.jsonl",),
        "val": ("video/ann/how2qa/how2qa_val_release.jsonl",),
        "test": ("video/ann/how2qa/how2qa_test_public_release.jsonl",),
    }
    subtitles = "video/ann/how2_subtitles.jsonl"
    frames = "video/vis_features/how2/clip-vit"

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticClipBank) -> list[Example]:
        rng = random.Random(f"how2qa-{split}-{data.seed}")
        examples = []
        for i in range(getattr(data, f"n_{split}")):
            clip = random_clip(rng, distinct_events(rng, rng.choice(list(EVENTS)), rng.randint(2, 3)))
            clip_id = bank.add(f"how2qa-{split}-clip{i:05d}", clip)
            asked = clip.tracks[0]
            in_clip = [(t.color, t.shape) for t in clip.tracks]
            others = rng.sample([k for k in KINDS if k not in in_clip], self.n_choices - len(in_clip))
            choices = [f"the {color} {shape}" for color, shape in in_clip + others]
            rng.shuffle(choices)
            text = qa_text([f"narrator: look, something {asked.event}."], "which shape was it?", clip.ts, choices)
            examples.append(self.example(f"how2qa-{split}-{i:05d}", clip_id, text, choices.index(asked.phrase)))
        return examples
