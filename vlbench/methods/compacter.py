"""Compacter: an adapter whose down/up projections are PHM layers, docs/paper-facts.md §2.

A PHM layer builds its weight as W = sum_i A_i (x) B_i (Kronecker products) from k "rule" matrices
A_i (k x k) and k blocks B_i (d_in/k x d_out/k), so it holds about 1/k of a Linear's parameters.
Paper setting (the default here): k = 2, every layer its own A, B full, 74,608 params per site at
d_model 768 / bottleneck 96. Options (`Compacter.Options`, defaults there) for the original Compacter:
  * phm_k: k,
  * shared_rules: one A for all down-projections and one for all up-projections,
  * low_rank: factorise each B_i = s_i t_i^T with this rank (0: full B).
Placement, sharing and the trainable set (PHM adapters, all LM LayerNorms, theta V->L) are the
adapter family's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlbench.config import UserError
from vlbench.methods.adapter import AdapterFamily
from vlbench.methods.base import bool_option, int_option
from vlbench.model import VLModel

RULE_INIT_STD = 0.01  # the original Compacter's phm_init_range: W starts small, the adapter near identity


def new_rule(k: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(k, k, k) * RULE_INIT_STD)


def glorot_blocks(*shape: int) -> nn.Parameter:
    """k Glorot-uniform blocks, each initialised on its own 2-D fan-in/fan-out (as the original)."""
    blocks = torch.empty(*shape)
    for block in blocks:
        nn.init.xavier_uniform_(block, gain=math.sqrt(2))
    return nn.Parameter(blocks)


class PHMLinear(nn.Module):
    """y = x @ W + b with W = sum_i kron(A_i, B_i); `rule` may be a Parameter shared with other layers."""

    def __init__(self, d_in: int, d_out: int, k: int, rule: nn.Parameter | None = None, low_rank: int = 0):
        super().__init__()
        self.d_in, self.d_out, self.k, self.low_rank = d_in, d_out, k, low_rank
        self.rule = rule if rule is not None else new_rule(k)  # A: (k, k, k)
        if low_rank:
            self.left = glorot_blocks(k, d_in // k, low_rank)  # s: (k, d_in/k, r)
            self.right = glorot_blocks(k, low_rank, d_out // k)  # t^T: (k, r, d_out/k)
        else:
            self.blocks = glorot_blocks(k, d_in // k, d_out // k)  # B: (k, d_in/k, d_out/k)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def block_matrices(self) -> torch.Tensor:
        return self.left @ self.right if self.low_rank else self.blocks

    def weight(self) -> torch.Tensor:
        # kron(A_i, B_i)[(a, p), (c, q)] = A_i[a, c] * B_i[p, q], summed over i
        w = torch.einsum("iac,ipq->apcq", self.rule, self.block_matrices())
        return w.reshape(self.d_in, self.d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


def check_divisible(k: int, hidden_dim: int, d_model: int) -> None:
    if hidden_dim % k:
        raise UserError(f"--hidden-dims: {hidden_dim} is not divisible by the PHM k={k}")
    if d_model % k:
        raise UserError(f"--option phm_k: d_model {d_model} is not divisible by the PHM k={k}")


class Compacter(AdapterFamily):
    name = "compacter"
    sharing_modes = ("multiple", "single")
    default_sharing = "single"

    @dataclass(frozen=True)
    class Options(AdapterFamily.Options):
        phm_k: int = int_option(2, help="k, the number of Kronecker-product terms")
        shared_rules: bool = bool_option(False, help="one rule A for all down- and one for all up-projections")
        low_rank: int = int_option(0, minimum=0, help="factorise each block B_i with this rank (0: full B)")

    @classmethod
    def check(cls, sharing, hidden_dim, d_model, options) -> None:
        check_divisible(options.phm_k, hidden_dim, d_model)

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        self.validate(self.config.sharing, self.config.hidden_dim, model.family.d_model, self.options)
        self.k = self.options.phm_k
        self.low_rank = self.options.low_rank
        # shared rules: one A per projection shape, i.e. one for all down- and one for all
        # up-projections (a single one if the bottleneck equals d_model)
        self.shared_rules = nn.ParameterDict() if self.options.shared_rules else None
        super().apply(model, tasks)
        if self.shared_rules is not None:
            model.method_modules["phm_rules"] = self.shared_rules

    def projection(self, d_in: int, d_out: int) -> nn.Module:
        rule = None
        if self.shared_rules is not None:
            key = f"{d_in}x{d_out}"
            if key not in self.shared_rules:
                self.shared_rules[key] = new_rule(self.k)
            rule = self.shared_rules[key]
        return PHMLinear(d_in, d_out, self.k, rule, self.low_rank)
