"""The language-model family interface: what the VL model and the methods need of an LM.

One module per family (seq2seq.py for what BART and T5 share, bart.py, t5.py, causal.py), one
registry line each in vlbench/lms/__init__.py. A family wraps the loaded transformers model `lm`
and gives:
  * structure, as data: `sublayers()` (stack, layer, kind, module) where adapters attach,
    `query_value` (the projections LoRA adapts), `norm` (its layer-norm class), `stacks` and
    `layers(stack)`;
  * the forward paths the VL model delegates to, given the VL model (which assembles the visual
    tokens and a method's prefix): `losses(model, batch)` (per example), `generate(model, batch,
    num_beams, max_new_tokens)` and `choice_logits(model, batch, choice_ids)` (NLVR2's first step);
  * `embed_text(input_ids)` and `output_logits(hidden)` (the LM head, as the model applies it);
  * for methods that build narrow copies of the LM beside it (Ladder Side-Tuning): `scaled_config`,
    `new_layers`, `final_norm`, `call_like` and `projection_axes`; a family without them refuses such
    methods in one line.
"""

from __future__ import annotations

import torch
from torch import nn

from vlbench.config import UserError


class LMFamily:
    name = ""
    norm: type = nn.LayerNorm
    query_value: tuple[str, str] = ("q_proj", "v_proj")
    stacks: tuple[str, ...] = ()
    projection_axes: dict = {}

    def __init__(self, lm: nn.Module):
        self.lm = lm

    @property
    def d_model(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    def layers(self, stack: str) -> nn.ModuleList:
        raise NotImplementedError

    def query_value_of(self, attention: nn.Module) -> tuple:
        """The query and value projections LoRA adapts in one attention module (by `query_value` names)."""
        q, v = self.query_value
        return getattr(attention, q), getattr(attention, v)

    def sublayers(self):
        raise NotImplementedError

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on last hidden states, as the model's own forward applies it."""
        return self.lm.get_output_embeddings()(hidden)

    def losses(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, model, batch: dict[str, torch.Tensor], num_beams: int, max_new_tokens: int) -> torch.Tensor:
        raise NotImplementedError

    def choice_logits(self, model, batch: dict[str, torch.Tensor], choice_ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def pretraining_batch(self, sentences: list[list[int]], tokenizer, mask_ratio: float, rng) -> dict:
        """The tiny LM's pretraining objective on token-id sentences: the keyword arguments of one
        `lm(**batch).loss` step (vlbench.backbones pretrains the tiny LMs with it)."""
        raise NotImplementedError

    # ---- side networks (LST) ------------------------------------------------------------------------
    def scaled_config(self, width: int):
        raise UserError(f"{self.name} LMs have no side-network support yet (Ladder Side-Tuning needs it)")


def check_reduction(d_model: int, width: int, heads: int) -> int:
    """The integer factor `d_model / width`, each of `heads` heads keeping whole dims."""
    if width <= 0 or d_model % width or width % heads:
        raise ValueError(f"a width of {width} does not divide d_model {d_model} into {heads} whole heads")
    return d_model // width


def per_example_loss(hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, head) -> torch.Tensor:
    """(B,) token cross-entropy averaged over each example's target (-100 ignored), times its weight.
    `head` maps (N, d) hidden states to (N, V) logits; it runs at the target positions only, since the
    padding of a batch's shorter targets (a caption batch is padded to its longest) would cost the
    head and softmax over the whole vocabulary for nothing."""
    target = labels != -100
    token_loss = torch.nn.functional.cross_entropy(head(hidden[target]), labels[target], reduction="none")
    per_token = token_loss.new_zeros(labels.shape).masked_scatter(target, token_loss)
    return per_token.sum(1) / target.sum(1).clamp(min=1) * weights


def pad_ids(sequences: list[list[int]], value: int) -> torch.Tensor:
    """Token-id lists right-padded with `value` into one (B, L) tensor."""
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences])
