"""Prompt tuning on the encoder input (docs/paper-facts.md §2).

P prompt tokens come from Embedding(P, d) -> Linear(d, mid) -> Tanh -> Linear(mid, d) (the MLP
reparameterisation; mid = option `prompt_mid_dim`, paper 800) and are prepended before the text
through `model.encoder_prefix`, with no position embedding. The hidden-dim axis is the prompt
length P (paper 40). Sharing: `multiple` (one prompt module per task) or `single`.
Trainable: the prompt modules and theta V->L only; the LM, LayerNorms included, stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlbench.methods.base import Method, freeze_all_but_visual_embedding, int_option
from vlbench.model import VLModel


class PromptEncoder(nn.Module):
    def __init__(self, length: int, d_model: int, mid_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(length, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mid_dim), nn.Tanh(), nn.Linear(mid_dim, d_model))

    def forward(self, batch_size: int) -> torch.Tensor:
        # recomputed every call: the MLP is part of what trains, so the prompts cannot be cached
        prompts = self.mlp(self.embedding.weight)  # (P, d)
        return prompts.unsqueeze(0).expand(batch_size, -1, -1)


class PromptTuning(Method):
    name = "prompt"
    sharing_modes = ("multiple", "single")
    default_sharing = "single"
    uses_hidden_dim = True
    hidden_dim_meaning = "prompt length"

    @dataclass(frozen=True)
    class Options:
        prompt_mid_dim: int = int_option(800, help="the width of the reparameterising MLP")

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        d_model = model.family.d_model
        mid_dim = self.options.prompt_mid_dim
        keys = tasks if self.config.sharing == "multiple" else ("shared",)
        prompts = nn.ModuleDict({k: PromptEncoder(self.config.hidden_dim, d_model, mid_dim) for k in keys})
        model.method_modules["prompts"] = prompts
        # a plain function, not the module itself: assigning a module would register it a second time
        if self.config.sharing == "multiple":
            model.encoder_prefix = lambda batch_size: prompts[model.router.require()](batch_size)
        else:
            model.encoder_prefix = lambda batch_size: prompts["shared"](batch_size)
