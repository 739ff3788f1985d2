"""Hyperformer: one hypernetwork generates every adapter's weights (docs/paper-facts.md §2).

A trainable embedding per task (shared by encoder and decoder) and a layer-id embedding per stack
are concatenated and projected to a small conditioning vector; per sublayer type (encoder:
self-attn, ffn; decoder: self-attn, cross-attn, ffn) linear generators turn that vector into the
down/up weights and biases of an adapter A(y) = y + up(gelu(down(y))) at the same sites as
`adapter`. Nothing is stored per task except its embedding, so there is no sharing axis.

Paper count at d_model 768, bottleneck 96, 4 tasks, 6+6 layers (the reading of the description
that gives exactly 6,947,088):
  task embeddings                4 x 512                                 =     2,048
  per stack (x2)                 layer ids 6 x 512 + projector
                                 (1024*128+128) + (128*8+8) + LN 2*8     =   135,320
  generators per type (x5)       (8+1)*(768*96) x2 + (8+1)*96 + (8+1)*768 = 1,334,880
  total                          2,048 + 2*135,320 + 5*1,334,880          = 6,947,088
Trainable: hypernetwork, all LM LayerNorms, theta V->L (5.79 % in Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlbench.methods.base import (
    Method,
    freeze_all_but_visual_embedding,
    int_option,
    near_identity_linear,
    transform_output,
    unfreeze_layer_norms,
)
from vlbench.model import VLModel


class AdapterGenerator(nn.Module):
    """Maps a conditioning vector to the four tensors of one bottleneck adapter."""

    def __init__(self, cond_dim: int, d_model: int, hidden: int):
        super().__init__()
        self.d_model, self.hidden = d_model, hidden
        self.down_weight = near_identity_linear(cond_dim, d_model * hidden)
        self.down_bias = near_identity_linear(cond_dim, hidden)
        self.up_weight = near_identity_linear(cond_dim, hidden * d_model)
        self.up_bias = near_identity_linear(cond_dim, d_model)

    def forward(self, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """cond (n, cond_dim) -> each tensor with a leading n; weights shaped (out, in) for F.linear."""
        return {
            "down_weight": self.down_weight(cond).view(-1, self.hidden, self.d_model),
            "down_bias": self.down_bias(cond),
            "up_weight": self.up_weight(cond).view(-1, self.d_model, self.hidden),
            "up_bias": self.up_bias(cond),
        }


class StackHyperNet(nn.Module):
    """The encoder's or the decoder's half: layer-id embedding, projector, one generator per sublayer type."""

    def __init__(
        self, n_layers: int, kinds: list[str], d_model: int, hidden: int, emb_dim: int, proj_dim: int, cond_dim: int
    ):
        super().__init__()
        self.layer_embeddings = nn.Embedding(n_layers, emb_dim)
        self.projector = nn.Sequential(
            near_identity_linear(2 * emb_dim, proj_dim),
            nn.ReLU(),
            near_identity_linear(proj_dim, cond_dim),
            nn.LayerNorm(cond_dim),
        )
        self.generators = nn.ModuleDict({k: AdapterGenerator(cond_dim, d_model, hidden) for k in kinds})

    def forward(self, task_embedding: torch.Tensor) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
        """Every (layer, kind)'s adapter weights: one projector pass over all layer ids and one pass of
        each generator over all layers (a step then adds one gradient into each generator, not one
        per layer)."""
        layers = self.layer_embeddings.weight
        cond = self.projector(torch.cat([task_embedding.expand(len(layers), -1), layers], 1))
        weights = {}
        for kind, generator in self.generators.items():
            generated = generator(cond)
            for layer in range(len(layers)):
                weights[layer, kind] = {name: w[layer] for name, w in generated.items()}
        return weights


class HyperNetwork(nn.Module):
    def __init__(self, tasks: tuple[str, ...], stacks: dict[str, StackHyperNet], emb_dim: int):
        super().__init__()
        self.task_index = {t: i for i, t in enumerate(tasks)}
        self.task_embeddings = nn.Embedding(len(tasks), emb_dim)  # default init is N(0, 1), the paper's randn
        self.stacks = nn.ModuleDict(stacks)

    def forward(self, task: str, stack: str) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
        """`task`'s adapter weights for every sublayer of `stack`, keyed by (layer, kind)."""
        return self.stacks[stack](self.task_embeddings.weight[self.task_index[task]])


def generated_adapter(y: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    return y + F.linear(F.gelu(F.linear(y, w["down_weight"], w["down_bias"])), w["up_weight"], w["up_bias"])


class Hyperformer(Method):
    name = "hyperformer"
    version = 2  # 2: each stack's adapters generated in one batched pass (float rounding of 1's per-site passes)
    uses_hidden_dim = True
    hidden_dim_meaning = "bottleneck size"

    @dataclass(frozen=True)
    class Options:
        task_embedding_dim: int = int_option(512, help="the width of each task's (and layer id's) embedding")
        hyper_projector_dim: int = int_option(128, help="the hidden width of the conditioning projector")
        hyper_condition_dim: int = int_option(8, help="the conditioning vector the generators read")

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        unfreeze_layer_norms(model)
        emb_dim = self.options.task_embedding_dim
        proj_dim = self.options.hyper_projector_dim
        cond_dim = self.options.hyper_condition_dim
        sites = model.sublayer_sites()
        d_model = sites[0].dim
        stacks = {}
        for stack in dict.fromkeys(s.stack for s in sites):  # keeps encoder, decoder order
            in_stack = [s for s in sites if s.stack == stack]
            n_layers = max(s.layer for s in in_stack) + 1
            kinds = list(dict.fromkeys(s.kind for s in in_stack))
            stacks[stack] = StackHyperNet(n_layers, kinds, d_model, self.config.hidden_dim, emb_dim, proj_dim, cond_dim)
        hypernet = HyperNetwork(tasks, stacks, emb_dim)
        # A stack's adapters are generated afresh when a pass reaches its first sublayer (every
        # forward, every decoding step), so gradients flow to the hypernetwork each step; the stack's
        # other sublayers read them.
        first = {stack: next(s for s in sites if s.stack == stack) for stack in stacks}
        generated: dict[str, dict] = {}

        def adapt(y: torch.Tensor, site) -> torch.Tensor:
            if site is first[site.stack]:
                generated[site.stack] = hypernet(model.router.require(), site.stack)
            return generated_adapter(y, generated[site.stack][site.layer, site.kind])

        for site in sites:
            self.hook_handles.append(transform_output(site.module, lambda y, s=site: adapt(y, s)))
        model.method_modules["hyperformer"] = hypernet
