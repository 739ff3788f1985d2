"""LM families: a new one is a module in this package plus one line here (keyed by the transformers
config's `model_type`). See vlbench/lms/base.py for the interface."""

from torch import nn

from vlbench.lms.bart import BartFamily
from vlbench.lms.base import LMFamily
from vlbench.lms.causal import CausalFamily
from vlbench.lms.t5 import T5Family

FAMILIES: dict[str, type[LMFamily]] = {
    "bart": BartFamily,
    "t5": T5Family,
    "llama": CausalFamily,
    "qwen2": CausalFamily,
    "mistral": CausalFamily,
    "opt": CausalFamily,
    "gpt2": CausalFamily,
}


def family_of(lm: nn.Module) -> LMFamily:
    model_type = lm.config.model_type
    if model_type not in FAMILIES:
        raise ValueError(f"no LM family for model_type {model_type!r} (vlbench knows {', '.join(FAMILIES)})")
    return FAMILIES[model_type](lm)
