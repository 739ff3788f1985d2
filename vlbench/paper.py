"""The paper's published numbers (VL-Adapter, CVPR 2022), shipped as data.

Table 1: multi-task image-text results of CLIP-BART (Updated Params %, VQA Karpathy test, GQA
test-dev, NLVR2 test-P, COCO Karpathy test CIDEr, average). Each row also names the vlbench job
that reproduces it under the paper profile (method, sharing, hidden dim).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    label: str
    method: str
    sharing: str | None
    hidden_dim: int | None  # adapter/compacter/hyperformer bottleneck, LoRA rank, prompt length
    params_percent: float
    vqa: float
    gqa: float
    nlvr: float
    caption: float
    avg: float


TABLE1 = (
    PaperRow("Full fine-tuning", "full", None, None, 100.00, 67.6, 56.7, 73.0, 112.9, 77.6),
    PaperRow("Multiple Adapters", "adapter", "multiple", 96, 12.22, 65.4, 54.0, 69.8, 114.3, 75.9),
    PaperRow("Half-shared Adapters", "adapter", "half", 96, 8.36, 65.2, 53.4, 71.2, 113.7, 75.9),
    PaperRow("Single Adapter", "adapter", "single", 96, 4.18, 65.9, 54.5, 74.2, 114.9, 77.4),
    PaperRow("Hyperformer", "hyperformer", None, 96, 5.79, 65.1, 53.4, 72.3, 114.6, 76.4),
    PaperRow("Multiple Compacters", "compacter", "multiple", 96, 7.05, 64.6, 53.4, 69.1, 116.0, 75.8),
    PaperRow("Single Compacter", "compacter", "single", 96, 2.70, 64.2, 53.3, 71.7, 114.1, 75.8),
    PaperRow("Multiple LoRA", "lora", "multiple", 128, 17.72, 65.5, 53.0, 62.8, 115.4, 74.2),
    PaperRow("Single LoRA", "lora", "single", 128, 5.93, 65.2, 53.6, 71.9, 115.3, 76.5),
    PaperRow("Multiple Prompts", "prompt", "multiple", 40, 4.53, 43.8, 38.1, 51.1, 104.6, 59.4),
    PaperRow("Single Prompt", "prompt", "single", 40, 2.00, 44.0, 36.3, 51.8, 103.9, 59.0),
)
