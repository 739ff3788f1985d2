"""How2QA: multiple-choice questions (4 candidates) on instructional YouTube clips with subtitles; accuracy.

Real data: VALUE's `video/ann/how2qa/how2qa_{train,val,test_public}_release.jsonl` (records as TVQA's,
four candidates), the subtitles `video/ann/how2_subtitles.jsonl`, the frames `video/vis_features/how2/clip-vit/`.

Synthetic: a narrator says which colour to look out for ("narrator: look out for the red one."), the
question asks what shape it was, and the candidates are the three shapes and "none of them", always
in the same order. The shapes of a clip have different colours; the answer is drawn uniformly (for
"none of them" the narrator names a colour no shape has), so the text alone is at chance (1 in 4)
and the frames, without the subtitle, do not say which shape is meant.
"""

from __future__ import annotations

import random

from vlbench.config import DataConfig
from vlbench.tasks.base import Example
from vlbench.tasks.scenes import COLORS, SHAPES
from vlbench.tasks.video import EVENTS, SyntheticClipBank, VideoQATask, qa_text, random_clip

ANSWERS = ("a circle", "a square", "a triangle", "none of them")


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
            answer = rng.randrange(len(ANSWERS))
            colors = rng.sample(list(COLORS), 4)  # the looked-for colour first; a clip's shapes differ in colour
            n = rng.randint(2, 3)
            if answer < len(SHAPES):  # the looked-for shape first, then others of other colours
                kinds = [(colors[0], SHAPES[answer])] + [(c, rng.choice(SHAPES)) for c in colors[1:n]]
            else:  # no shape of the looked-for colour
                kinds = [(c, rng.choice(SHAPES)) for c in colors[1 : n + 1]]
            clip = random_clip(rng, [rng.choice(EVENTS) for _ in kinds], kinds=kinds)
            clip_id = bank.add(f"how2qa-{split}-clip{i:05d}", clip)
            text = qa_text([f"narrator: look out for the {colors[0]} one."], "what shape was it?", clip.ts, ANSWERS)
            examples.append(self.example(f"how2qa-{split}-{i:05d}", clip_id, text, answer))
        return examples
