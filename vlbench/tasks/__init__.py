"""The image-text tasks (VQA, GQA, NLVR2, COCO captions) and the synthetic suite built from them.

    TASKS[name] -> Task                      (see vlbench.tasks.base for the Task interface)
    build_suite(data, task_names) -> Suite   suite.examples[task][split], suite.bank, suite.image_ids()
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vlbench.config import DataConfig, UserError
from vlbench.tasks.base import Example, Task
from vlbench.tasks.caption import CaptionTask
from vlbench.tasks.gqa import GQATask
from vlbench.tasks.nlvr import NLVRTask
from vlbench.tasks.scenes import SyntheticImageBank
from vlbench.tasks.vqa import VQATask

TASKS: dict[str, Task] = {task.name: task for task in (VQATask(), GQATask(), NLVRTask(), CaptionTask())}
SPLITS = ("train", "val", "test")

__all__ = ["TASKS", "SPLITS", "Example", "Task", "Suite", "build_suite"]


@dataclass
class Suite:
    bank: SyntheticImageBank  # shared by all tasks; every image id belongs to one task and split
    examples: dict[str, dict[str, list[Example]]]  # task -> split -> examples

    def fingerprint(self) -> str:
        """A hash of every image's scene: a feature cache keyed by it can never serve stale images."""
        scenes = "\n".join(f"{i}={self.bank.scene(i)!r}" for i in self.image_ids())
        return hashlib.sha256(scenes.encode()).hexdigest()[:16]

    def image_ids(self) -> list[str]:
        examples = [e for splits in self.examples.values() for split in splits.values() for e in split]
        return sorted({i for e in examples for i in e.image_ids})


def build_suite(data: DataConfig, task_names) -> Suite:
    """The synthetic suite for `task_names`, deterministic in `data.seed`. Images render lazily."""
    if data.source != "synthetic":
        raise UserError(f"build_suite makes the synthetic suite; data source {data.source!r} is not synthetic")
    unknown = [t for t in task_names if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; known: {', '.join(TASKS)}")
    bank = SyntheticImageBank(data.image_size)
    examples = {t: {split: TASKS[t].synthetic(data, split, bank) for split in SPLITS} for t in task_names}
    return Suite(bank, examples)
