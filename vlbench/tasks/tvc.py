"""TVC: captions of moments in TV show clips, with their subtitles; CIDEr.

Real data: VALUE's `video/ann/tvc/tvc_{train,val,test}_release.jsonl` (one record per clip: `vid_name`,
`ts`, `clip_id`, `descs`), the subtitles `video/ann/tv_subtitles.jsonl`, the frames
`video/vis_features/tv/clip-vit/` (shared with TVQA).

Synthetic: one shape comes in, goes out, comes and goes, or goes and comes back while one or two
others stay; the subtitles tell who owns each shape; the caption says whose shape did what ("tom's
red circle comes in"). Training clips have 2 references, val and test clips 4, as in TVC.
"""

from __future__ import annotations

import random

from vlbench.config import DataConfig
from vlbench.tasks.base import Example
from vlbench.tasks.video import NAMES, SyntheticClipBank, VideoCaptionTask, caption_text, random_clip

MOMENTS = ("comes in", "goes out", "comes and goes", "goes and comes back")


class TVCTask(VideoCaptionTask):
    name = "tvc"
    prefix = "tvc: "
    files = {split: (f"video/ann/tvc/tvc_{split}_release.jsonl",) for split in ("train", "val", "test")}
    subtitles = "video/ann/tv_subtitles.jsonl"
    frames = "video/vis_features/tv/clip-vit"

    def synthetic(self, data: DataConfig, split: str, bank: SyntheticClipBank) -> list[Example]:
        rng = random.Random(f"tvc-{split}-{data.seed}")
        examples = []
        for i in range(getattr(data, f"n_{split}")):
            clip = random_clip(rng, [rng.choice(MOMENTS)] + ["stays"] * rng.randint(1, 2))
            clip_id = bank.add(f"tvc-{split}-clip{i:05d}", clip)
            owners = dict(zip(clip.tracks, rng.sample(NAMES, len(clip.tracks))))
            lines = [f"{name}: {track.phrase} is mine." for track, name in owners.items()]
            rng.shuffle(lines)
            actor = clip.tracks[0]
            name, color, shape, event = owners[actor], actor.color, actor.shape, actor.event
            references = [
                f"{name}'s {color} {shape} {event}",
                f"the {color} {shape} of {name} {event}",
                f"{name}'s {shape} {event}",
                f"the {shape} of {name} {event}",
            ]
            text = caption_text(lines, clip.ts)
            examples.append(
                self.example(f"tvc-{split}-{i:05d}", clip_id, text, references[:2] if split == "train" else references)
            )
        return examples
