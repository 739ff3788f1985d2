"""YC2C: captions of YouCook2 recipe steps, with the narration as subtitles; CIDEr.

Real data: VALUE's `video/ann/yc2c/yc2c_{train,val,test}_release.jsonl` (records as TVC's), the
subtitles `video/ann/yc2_subtitles.jsonl`, the frames `video/vis_features/yc2/clip-vit/`.

Synthetic: two shapes come in or go out, one after the other, while maybe a third stays; the narrator
says which ingredient each shape is ("narrator: the red circle is the egg."); the caption tells the
two events in order ("the egg comes in then the milk goes out"). 3 references per clip.
"""

from __future__ import annotations

import random

from vlbench.config import DataConfig
from vlbench.tasks.base import Example
from vlbench.tasks.video import (
    CLIP_FRAMES,
    INGREDIENTS,
    SyntheticClipBank,
    VideoCaptionTask,
    caption_text,
    random_clip,
)

STEPS = ("comes in", "goes out")


class YC2CTask(VideoCaptionTask):
    name = "yc2c"
    prefix = "yc2c: "
    files = {split: (f"video/ann/yc2c/yc2c_{split}_release.jsonl",) for split in ("train", "val", "test")}
    subtitles = "video/ann/yc2_subtitles.jsonl"
    frames = "video/vis_features/yc2/clip-vit"

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticClipBank) -> list[Example]:
        rng = random.Random(f"yc2c-{split}-{data.seed}")
        examples = []
        for i in range(getattr(data, f"n_{split}")):
            n_frames = rng.randint(*CLIP_FRAMES)
            events = [rng.choice(STEPS), rng.choice(STEPS)] + ["stays"] * rng.randint(0, 1)
            times = sorted(rng.sample(range(1, n_frames), 2)) + [0]
            clip = random_clip(rng, events, n_frames, times)
            clip_id = bank.add(f"yc2c-{split}-clip{i:05d}", clip)
            names = dict(zip(clip.tracks, rng.sample(INGREDIENTS, len(clip.tracks))))
            lines = [f"narrator: {track.phrase} is the {name}." for track, name in names.items()]
            rng.shuffle(lines)
            (a, first), (b, then) = [(names[t], t.event) for t in clip.tracks[:2]]
            references = [
                f"the {a} {first} then the {b} {then}",
                f"first the {a} {first} and then the {b} {then}",
                f"the {a} {first} before the {b} {then}",
            ]
            examples.append(self.example(f"yc2c-{split}-{i:05d}", clip_id, caption_text(lines, clip.ts), references))
        return examples
