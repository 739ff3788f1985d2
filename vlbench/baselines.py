"""Baselines: reference rows that no trained model produces, in one registry (as methods are in
vlbench.methods). A sweep over synthetic data adds one run of each baseline per data setting; it is
stored like a run (under its name as the method, no sharing, no weights), scored by the tasks'
own metrics, shown in reports for reference (never bold) and left out of the trade-off plots.

A new baseline is one entry here: its name, its row label, a version (bumped when its predictions
change: the runs' fingerprints) and how it predicts a task's test split from the task's examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Baseline:
    name: str
    label: str
    version: int
    predict: Callable  # (task, train examples, test examples) -> {example id: prediction}


BASELINES = {
    "text-only": Baseline(
        "text-only",
        "Text-only prior (no visual input)",
        1,
        # the best answer that ignores the image: the most frequent training answer per question
        lambda task, train, test: task.text_only_predictions(train, test),
    ),
}


def is_baseline(method: str) -> bool:
    return method in BASELINES
