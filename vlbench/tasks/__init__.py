"""The image-text tasks (VQA, GQA, NLVR2, COCO captions) and the suites built from them.

    TASKS[name] -> Task                      (see vlbench.tasks.base for the Task interface)
    VIDEO_TASKS[name] -> Task                the video-text tasks (TVQA, How2QA, TVC, YC2C; vlbench.tasks.video);
                                             ALL_TASKS holds both
    build_suite(data, task_names) -> Suite   suite.examples[task][split], suite.bank, suite.image_ids()

The suite is synthetic (`data.source == "synthetic"`, rendered from a seed) or real (`"real"`): the
VL-T5 / VL_adapter preprocessed files under the data root `data.root`, in VL-T5's folder names:

    split  vqa                      gqa                             nlvr             caption (COCO/dataset_coco.json)
    train  vqa/karpathy_train.json  GQA/train.json + GQA/valid.json  nlvr/train.json  images of split train + restval
    val    vqa/karpathy_val.json    GQA/testdev.json                 nlvr/valid.json  images of split val
    test   vqa/karpathy_test.json   GQA/testdev.json                 nlvr/test.json   images of split test

plus the official `vqa/v2_mscoco_val2014_annotations.json` (and `..._train2014_...` if a VQA val or
test question is on a train2014 image), which VQA scoring reads the 10 annotator answers from.
`data.n_train/n_val/n_test`, when set, keep the first n examples of each task's split (captions:
images) for quick runs. Image ids are the feature store's: COCO file stems, GQA `img_id`, NLVR2
`img0`/`img1`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlbench.config import DataConfig, UserError
from vlbench.tasks.base import Example, Task
from vlbench.tasks.caption import CaptionTask
from vlbench.tasks.gqa import GQATask
from vlbench.tasks.how2qa import How2QATask
from vlbench.tasks.nlvr import NLVRTask
from vlbench.tasks.scenes import SyntheticImageBank
from vlbench.tasks.tvc import TVCTask
from vlbench.tasks.tvqa import TVQATask
from vlbench.tasks.video import SyntheticClipBank
from vlbench.tasks.vqa import VQATask
from vlbench.tasks.yc2c import YC2CTask

TASKS: dict[str, Task] = {task.name: task for task in (VQATask(), GQATask(), NLVRTask(), CaptionTask())}
VIDEO_TASKS: dict[str, Task] = {task.name: task for task in (TVQATask(), How2QATask(), TVCTask(), YC2CTask())}
ALL_TASKS: dict[str, Task] = {**TASKS, **VIDEO_TASKS}
SPLITS = ("train", "val", "test")

__all__ = ["TASKS", "VIDEO_TASKS", "ALL_TASKS", "SPLITS", "Example", "Task", "Suite", "build_suite"]


@dataclass
class Suite:
    # synthetic: shared by all tasks, every image (video: clip) id in one task and split
    bank: SyntheticImageBank | SyntheticClipBank | None
    examples: dict[str, dict[str, list[Example]]]  # task -> split -> examples

    def fingerprint(self) -> str:
        """A hash of every image's scene: a feature cache keyed by it can never serve stale images."""
        scenes = "\n".join(f"{i}={self.bank.scene(i)!r}" for i in self.image_ids())
        return hashlib.sha256(scenes.encode()).hexdigest()[:16]

    def image_ids(self) -> list[str]:
        examples = [e for splits in self.examples.values() for split in splits.values() for e in split]
        return sorted({i for e in examples for i in e.image_ids})

    def first_use(self, image_ids: set[str]) -> tuple[str, str, str, str]:
        """(task, split, example uid, image id) of the first example that uses one of `image_ids`,
        so an error about missing inputs can name an example."""
        return next(
            (task, split, e.uid, i)
            for task, splits in self.examples.items()
            for split, examples in splits.items()
            for e in examples
            for i in e.image_ids
            if i in image_ids
        )


def build_suite(data: DataConfig, task_names, progress=None) -> Suite:
    """The suite for `task_names`: synthetic (deterministic in `data.seed`, images render lazily) or
    real (every file read and checked now, so a bad one stops the sweep before any training)."""
    unknown = [t for t in task_names if t not in ALL_TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; known: {', '.join(ALL_TASKS)}")
    video = [t in VIDEO_TASKS for t in task_names]
    if any(video) and not all(video):
        raise UserError(f"tasks {', '.join(task_names)}: a suite is either image-text or video-text")
    if data.source == "synthetic":
        bank = (SyntheticClipBank if any(video) else SyntheticImageBank)(data.image_size)
        examples = {t: {split: ALL_TASKS[t].synthetic(data, split, bank) for split in SPLITS} for t in task_names}
        return Suite(bank, examples)
    if data.source != "real":
        raise UserError(f"unknown data source {data.source!r} (synthetic or real)")
    if data.root is None:
        raise UserError("--data-root: real data needs the data root (give --data-root DIR or set VLBENCH_DATA_ROOT)")
    root = Path(data.root)
    if not root.is_dir():
        raise UserError(f"--data-root: {root} is not a folder")
    bar = progress.add_task("reading data", total=len(task_names) * len(SPLITS)) if progress is not None else None
    examples = {}
    for t in task_names:
        examples[t] = {}
        for split in SPLITS:
            limit = getattr(data, f"n_{split}")
            examples[t][split] = ALL_TASKS[t].load(root, split)[:limit]
            if bar is not None:
                progress.advance(bar)
    return Suite(None, examples)
