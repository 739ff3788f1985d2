"""The paper's published numbers (VL-Adapter, CVPR 2022), shipped as data.

Tables 1 (multi-task image-text, CLIP-BART), 2 (CLIP-T5), 3 (CLIP and BART trained or frozen, VQA
only), 4 (multi-task video-text) and 5 (which components train): Updated Params % where the paper
gives it, the test score of each task and the average. Each row also names the vlbench job that
reproduces it under the paper profile (method, sharing, hidden dim, method options).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    label: str
    method: str
    sharing: str | None
    hidden_dim: int | None  # adapter/compacter/hyperformer bottleneck, LoRA rank, prompt length
    params_percent: float | None  # None where the paper's table has no parameter column
    scores: dict[str, float]  # task -> published test score (accuracy %, or CIDEr x100)
    avg: float | None  # None for single-task tables
    options: tuple[tuple[str, object], ...] = ()  # method options that tell the row apart (Table 3)


def row(label, method, sharing, hidden_dim, percent, tasks, scores, avg, options=()) -> PaperRow:
    return PaperRow(label, method, sharing, hidden_dim, percent, dict(zip(tasks, scores)), avg, options)


IMAGE = ("vqa", "gqa", "nlvr", "caption")  # VQA Karpathy test, GQA test-dev, NLVR2 test-P, COCO Karpathy CIDEr
TABLE1 = (
    row("Full fine-tuning", "full", None, None, 100.00, IMAGE, (67.6, 56.7, 73.0, 112.9), 77.6),
    row("Multiple Adapters", "adapter", "multiple", 96, 12.22, IMAGE, (65.4, 54.0, 69.8, 114.3), 75.9),
    row("Half-shared Adapters", "adapter", "half", 96, 8.36, IMAGE, (65.2, 53.4, 71.2, 113.7), 75.9),
    row("Single Adapter", "adapter", "single", 96, 4.18, IMAGE, (65.9, 54.5, 74.2, 114.9), 77.4),
    row("Hyperformer", "hyperformer", None, 96, 5.79, IMAGE, (65.1, 53.4, 72.3, 114.6), 76.4),
    row("Multiple Compacters", "compacter", "multiple", 96, 7.05, IMAGE, (64.6, 53.4, 69.1, 116.0), 75.8),
    row("Single Compacter", "compacter", "single", 96, 2.70, IMAGE, (64.2, 53.3, 71.7, 114.1), 75.8),
    row("Multiple LoRA", "lora", "multiple", 128, 17.72, IMAGE, (65.5, 53.0, 62.8, 115.4), 74.2),
    row("Single LoRA", "lora", "single", 128, 5.93, IMAGE, (65.2, 53.6, 71.9, 115.3), 76.5),
    row("Multiple Prompts", "prompt", "multiple", 40, 4.53, IMAGE, (43.8, 38.1, 51.1, 104.6), 59.4),
    row("Single Prompt", "prompt", "single", 40, 2.00, IMAGE, (44.0, 36.3, 51.8, 103.9), 59.0),
)

# CLIP-T5; the Single Adapter uses "a larger hidden dimension" (section 5.1): 7.98% is d=192 on T5-base
TABLE2 = (
    row("Full fine-tuning", "full", None, None, 100.00, IMAGE, (67.3, 56.5, 75.4, 113.1), 78.1),
    row("Single Adapter", "adapter", "single", 192, 7.98, IMAGE, (67.6, 56.2, 73.9, 111.8), 77.4),
)

# VQA only; "CLIP fine-tuned + BART frozen" trains CLIP and theta V->L, "both frozen" theta V->L alone
VQA = ("vqa",)
TRAINED_CLIP = (("train_vision", True),)
TABLE3 = (
    row("CLIP fine-tuned + BART fine-tuned", "full", None, None, None, VQA, (65.6,), None, TRAINED_CLIP),
    row("CLIP fine-tuned + BART frozen", "proj-only", None, None, None, VQA, (39.4,), None, TRAINED_CLIP),
    row("CLIP frozen + BART fine-tuned", "full", None, None, None, VQA, (64.7,), None),
    row("CLIP frozen + BART frozen", "proj-only", None, None, None, VQA, (39.1,), None),
)

TABLE5 = (
    row("θV→L only", "proj-only", None, None, None, IMAGE, (32.2, 25.6, 52.1, 78.5), 47.1),
    row("θV→L + LayerNorm", "proj-ln", None, None, None, IMAGE, (49.5, 40.1, 52.4, 109.6), 62.9),
    row("Single Adapter", "adapter", "single", 96, 4.18, IMAGE, (65.9, 54.5, 74.2, 114.9), 77.4),
)

VIDEO = ("tvqa", "how2qa", "tvc", "yc2c")  # test-pub: TVQA/How2QA accuracy, TVC/YC2C CIDEr
TABLE4 = (
    row("Full fine-tuning", "full", None, None, 100.00, VIDEO, (76.3, 73.9, 45.7, 154.0), 87.4),
    row("Single Adapter", "adapter", "single", 96, 3.39, VIDEO, (76.6, 73.9, 46.3, 152.9), 87.4),
    row("Single LoRA", "lora", "single", 128, 5.17, VIDEO, (75.5, 72.9, 44.6, 140.9), 83.4),
    row("Single Prompt", "prompt", "single", 40, 1.18, VIDEO, (32.1, 30.2, 29.5, 102.0), 48.4),
)
# which paper table (and sweep preset) lists the parameter column of each suite
TABLES_BY_SUITE = {"image-text": ("table1", TABLE1), "video-text": ("table4", TABLE4)}
