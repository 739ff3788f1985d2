"""LoRA on the query and value projections of every LM attention module, docs/paper-facts.md §2
(BART's q_proj/v_proj, T5's q/v).

Each projection's output gets `+ scaling * B(A(dropout(x)))` through a forward hook, with
scaling = alpha / r, A Kaiming-uniform and B zero as in PEFT (so training starts from the
pretrained model). Options (`LoRA.Options`, defaults there): lora_alpha, lora_dropout.
Sharing: `multiple` (one A/B pair per task), `single`.
Trainable: LoRA A/B, every LM parameter whose name contains "bias" (LayerNorm biases included,
their weights not; T5 has no biases, so only its relative_attention_bias tables, as in the
reference's name match), theta V->L.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlbench.methods.base import Method, float_option, freeze_all_but_visual_embedding
from vlbench.model import VLModel

PROJECTIONS = ("q_proj", "v_proj")  # site-name suffixes for BART's q_proj/v_proj and T5's q/v


class LoRAPair(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def add_update(self, output, x, scaling: float):
        """output + scaling * B(A(x)), the add fused into the up-projection's matmul (addmm) and the
        scaling into B's (rank x d) weight, not into the (tokens x d) activations: on CPU the
        separate elementwise passes cost more than the rank-r matmuls themselves."""
        low = self.lora_A(x).flatten(0, -2)
        fused = torch.addmm(output.flatten(0, -2), low, (self.lora_B.weight * scaling).t())
        return fused.view_as(output)


class LoRASite(nn.Module):
    """The low-rank update of one projection; `keys` maps each task to the pair it uses."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float, keys: dict[str, str]):
        super().__init__()
        self.pairs = nn.ModuleDict(
            {k: LoRAPair(linear.in_features, linear.out_features, rank) for k in sorted(set(keys.values()))}
        )
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank
        self.keys = keys

    def forward(self, output, x, task: str):
        """The projection's output with this task's low-rank update added."""
        return self.pairs[self.keys[task]].add_update(output, self.dropout(x), self.scaling)


class LoRA(Method):
    name = "lora"
    sharing_modes = ("multiple", "single")
    default_sharing = "single"
    uses_hidden_dim = True
    hidden_dim_meaning = "rank"

    @dataclass(frozen=True)
    class Options:
        lora_alpha: float = float_option(32.0, help="the update is scaled by lora_alpha / rank")
        lora_dropout: float = float_option(0.1, high=1.0, closed_low=True, help="dropout on the LoRA input")

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        for name, p in model.lm.named_parameters():
            if "bias" in name:
                p.requires_grad_(True)
        alpha = self.options.lora_alpha
        dropout = self.options.lora_dropout
        keys = {t: t for t in tasks} if self.config.sharing == "multiple" else {t: "shared" for t in tasks}
        sites = nn.ModuleDict()
        for attn_name, query, value in model.query_value_projections():
            for proj, linear in zip(PROJECTIONS, (query, value)):
                site = LoRASite(linear, self.config.hidden_dim, alpha, dropout, keys)
                sites[f"{attn_name}.{proj}".replace(".", "_")] = site
                self.hook_handles.append(
                    linear.register_forward_hook(
                        lambda _m, inputs, output, s=site: s(output, inputs[0], model.router.require())
                    )
                )
        model.method_modules["lora"] = sites
