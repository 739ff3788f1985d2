"""Ladder Side-Tuning (Sung, Cho and Bansal, NeurIPS 2022; reference code ylsung/Ladder-Side-Tuning,
VL-T5/): a narrow side network beside the frozen LM, fed from every LM layer through ladders.

Structure, per stack (encoder, decoder). The side network is the LM's own layers at width
`--hidden-dims` (default d_model / 4: 192 for BART-base and T5-base, the reference's reduction
factor 4), with the same number of layers and heads (each head narrower; FFN scaled alike).
  * its input is `first_down(x)`, x the input of the LM stack's first layer;
  * before side layer i, a ladder mixes in the LM's layer-i output h_i through a learned gate:
    `mu_i * down_i(h_i) + (1 - mu_i) * side`, mu_i = sigmoid(alpha_i / T) (alpha_i starts at
    `gate_alpha`, T is `gate_T`);
  * the side decoder cross-attends to the side encoder's output (T5: after its own final layer norm);
  * the LM decoder's output gets `up(side decoder output)` added before the LM head. `up` starts at
    zero, so at initialisation the model computes exactly what the pretrained LM does.
The LM runs from a detached input: its weights are frozen, so autograd records nothing of it and
keeps none of its activations for the backward pass, which is where LST's memory saving comes from
(the gradient reaches theta V->L through the side network only). Side layers run in the LM layers'
forward hooks with the masks, position biases and KV cache the LM's layers get; their cache layers
are numbered after the LM's, so decoding caches and reorders them with the LM's.

Initialisation (`side_init`). `pruned` (default): structural pruning of the LM's weights by
magnitude. The reference prunes with Fisher information, which needs gradients of the task loss
before training; vlbench keeps the dimensions whose weights have the largest squared L2 norm
instead, with the same structure: one set of residual dimensions for the whole network (those
most read and written by every layer's projections), per attention module the same number of dims
in every head (scored over its q, k, v rows and out-projection columns), per FFN its inner units
(scored over the in and out projections); layer norms and biases follow the kept dims, T5's
relative-position tables are copied whole. The ladders start as the selection of the kept residual
dims, so `down_i(h_i)` is h_i pruned the same way. `random`: the layers' and ladders' default init.

Trainable: the side layers, ladders, gates, `up` and theta V->L. Sharing: `single` only (one side
network for every task; the reference's optional task prompts are not implemented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlbench.config import UserError
from vlbench.methods.base import Method, choice_option, float_option, freeze_all_but_visual_embedding
from vlbench.model import VLModel

STACKS = ("encoder", "decoder")


class SideStack(nn.Module):
    """One stack of the side network with the ladders that feed it from the LM's stack."""

    def __init__(self, layers: nn.ModuleList, d_model: int, width: int, final_norm: nn.Module, gate_alpha: float):
        super().__init__()
        self.layers = layers
        self.first_down = nn.Linear(d_model, width)
        self.downs = nn.ModuleList(nn.Linear(d_model, width) for _ in layers)
        self.gate_logits = nn.Parameter(torch.full((len(layers),), float(gate_alpha)))
        self.final_norm = final_norm


class LST(Method):
    name = "lst"
    sharing_modes = ("single",)
    default_sharing = "single"
    uses_hidden_dim = True
    hidden_dim_meaning = "side network width"

    @dataclass(frozen=True)
    class Options:
        gate_alpha: float = float_option(0.0, low=-math.inf, help="the ladders' gate logits start here")
        gate_T: float = float_option(0.1, help="the gates' temperature: mu = sigmoid(alpha / T)")
        side_init: str = choice_option("pruned", ("pruned", "random"), help="the side network's initialisation")

    @classmethod
    def check(cls, sharing, hidden_dim, d_model, options) -> None:
        if hidden_dim is not None and (hidden_dim >= d_model or d_model % hidden_dim):
            raise UserError(f"--hidden-dims: the side network's width must divide d_model {d_model}, got {hidden_dim}")

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        family = model.family
        d_model, width = model.family.d_model, self.config.hidden_dim
        try:
            config = family.scaled_config(width)
        except ValueError as e:
            raise UserError(f"--hidden-dims: {e}") from None
        side = nn.ModuleDict()
        first_index = len(family.layers("decoder"))  # the side's KV-cache layers follow the LM's
        for stack in STACKS:
            layers = family.new_layers(config, stack, first_index)
            side[stack] = SideStack(layers, d_model, width, family.final_norm(width), self.options.gate_alpha)
        side["up"] = nn.Linear(width, d_model)
        nn.init.zeros_(side["up"].weight)
        nn.init.zeros_(side["up"].bias)
        if self.options.side_init == "pruned":
            prune_into(model, side, width)
        model.method_modules["lst"] = side
        self.hook_handles += attach(model, side, self.options.gate_T)


def attach(model: VLModel, side: nn.ModuleDict, temperature: float) -> list:
    """Hooks that run the side network beside the LM; their handles."""
    family = model.family
    state: dict = {}  # per forward pass: each stack's side hidden state and carry, the side encoder's output
    handles = []

    def begin(stack: str):
        def hook(_module, args, kwargs):
            state[stack] = (side[stack].first_down(args[0]), (None, None))
            return (args[0].detach(), *args[1:]), kwargs

        return hook

    def step(stack: str, i: int, last: bool):
        ladder = side[stack]

        def hook(_module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            side_hidden, carry = state[stack]
            gate = torch.sigmoid(ladder.gate_logits[i] / temperature)
            mixed = gate * ladder.downs[i](hidden) + (1 - gate) * side_hidden
            side_hidden, carry = family.call_like(ladder.layers[i], mixed, args, kwargs, state.get("memory"), carry)
            state[stack] = (side_hidden, carry)
            if last and stack == "encoder":
                state["memory"] = ladder.final_norm(side_hidden)

        return hook

    def merge(_module, _args, output):
        side_hidden, _ = state.pop("decoder")
        output.last_hidden_state = output.last_hidden_state + side["up"](side["decoder"].final_norm(side_hidden))
        return output

    for stack in STACKS:
        layers = family.layers(stack)
        handles.append(layers[0].register_forward_pre_hook(begin(stack), with_kwargs=True))
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(step(stack, i, i == len(layers) - 1), with_kwargs=True))
    handles.append(model.lm.get_decoder().register_forward_hook(merge))
    return handles


# ---- structural pruning ------------------------------------------------------------------------
def axes_of(family, module_name: str) -> tuple[str, str] | None:
    return family.projection_axes.get(module_name.rsplit(".", 1)[-1])


def residual_dims(model: VLModel, width: int) -> torch.Tensor:
    """The `width` residual dims whose rows and columns weigh most over every LM layer's projections."""
    family = model.family
    score = 0
    for stack in STACKS:
        for layer in family.layers(stack):
            for name, module in layer.named_modules():
                axes = axes_of(family, name)
                if axes:
                    score = score + module.weight.pow(2).sum(dim=1 - axes.index("model"))
    return torch.topk(score, width).indices.sort().values


def inner_dims(family, twin: nn.Module, layer: nn.Module, keep: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per projection group of the LM layer `twin` (an attention module, an FFN): the head dims or FFN
    units the side `layer` keeps, by their weights' squared norms over the kept residual dims."""
    scores: dict[str, torch.Tensor] = {}
    inner: dict[str, str] = {}
    for name, module in twin.named_modules():
        axes = axes_of(family, name)
        if not axes:
            continue
        kind = "head" if "head" in axes else "ffn"
        axis = axes.index(kind)
        group = name.rpartition(".")[0]
        score = module.weight.index_select(1 - axis, keep).pow(2).sum(dim=1 - axis)
        scores[group] = scores.get(group, 0) + score
        inner[group] = kind
    sizes = {}  # group -> the side layer's size of the group's inner axis
    for name, module in layer.named_modules():
        axes = axes_of(family, name)
        if axes:
            sizes[name.rpartition(".")[0]] = module.weight.shape[axes.index(inner[name.rpartition(".")[0]])]
    chosen = {}
    for group, score in scores.items():
        kind, size = inner[group], sizes[group]
        if kind == "ffn":
            chosen[group] = {kind: torch.topk(score, size).indices.sort().values}
            continue
        twin_group = twin.get_submodule(group)
        heads = getattr(twin_group, "num_heads", None) or twin_group.n_heads
        per_head = score.view(heads, -1)
        dims = torch.topk(per_head, size // heads, dim=1).indices.sort(dim=1).values
        chosen[group] = {kind: (dims + torch.arange(heads)[:, None] * per_head.shape[1]).flatten()}
    return chosen


@torch.no_grad()
def prune_into(model: VLModel, side: nn.ModuleDict, width: int) -> None:
    """Initialise the side network from the LM's weights by structural pruning (module docstring)."""
    family = model.family
    keep = residual_dims(model, width)
    for stack in STACKS:
        ladder = side[stack]
        for twin, layer in zip(family.layers(stack), ladder.layers):
            chosen = inner_dims(family, twin, layer, keep)
            sources = dict(twin.named_parameters())
            for name, p in layer.named_parameters():
                source = sources[name]
                module_name, _, kind = name.rpartition(".")
                axes = axes_of(family, module_name)
                if axes:
                    index = {"model": keep, **chosen[module_name.rpartition(".")[0]]}
                    source = source.index_select(0, index[axes[0]])
                    if kind == "weight":
                        source = source.index_select(1, index[axes[1]])
                elif source.shape != p.shape:  # a layer norm's weight or bias: the residual dims
                    source = source.index_select(0, keep)
                p.copy_(source)
        for down in (ladder.first_down, *ladder.downs):
            down.weight.zero_()
            down.weight[torch.arange(width), keep] = 1.0
            down.bias.zero_()
