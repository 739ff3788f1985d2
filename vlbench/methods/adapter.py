"""Adapters (Houlsby-style bottlenecks) at every sublayer output of the LM, docs/paper-facts.md §2.

Each site computes A(y) = y + up(gelu(down(y))) on the sublayer output, before dropout, residual
and the post-LayerNorm. Sharing: `multiple` (one adapter per task), `half` (the up-projection shared
across tasks, the down-projection per task; option `half_shared=down` swaps them), `single`.
Trainable: adapters, all LM LayerNorms, theta V->L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from vlbench.methods.base import (
    Method,
    choice_option,
    freeze_all_but_visual_embedding,
    near_identity_linear,
    transform_output,
    unfreeze_layer_norms,
)
from vlbench.model import VLModel


class Bottleneck(nn.Module):
    """Per-task down/up projections: `down_keys`/`up_keys` map each task to the module it uses."""

    def __init__(self, make_down, make_up, down_keys: dict[str, str], up_keys: dict[str, str]):
        super().__init__()
        self.down = nn.ModuleDict({k: make_down() for k in sorted(set(down_keys.values()))})
        self.up = nn.ModuleDict({k: make_up() for k in sorted(set(up_keys.values()))})
        self.down_keys, self.up_keys = down_keys, up_keys

    def forward(self, y, task: str):
        return y + self.up[self.up_keys[task]](F.gelu(self.down[self.down_keys[task]](y)))


class AdapterFamily(Method):
    """Shared by the adapter and compacter modules: differs only in how a projection is built."""

    uses_hidden_dim = True
    hidden_dim_meaning = "bottleneck size"

    @dataclass(frozen=True)
    class Options:
        half_shared: str = choice_option("up", ("up", "down"), help="which projection `half` sharing shares")

    def projection(self, d_in: int, d_out: int) -> nn.Module:
        raise NotImplementedError

    def routing(self, tasks: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
        per_task = {t: t for t in tasks}
        shared = {t: "shared" for t in tasks}
        if self.config.sharing == "multiple":
            return per_task, per_task
        if self.config.sharing == "half":
            return (shared, per_task) if self.options.half_shared == "down" else (per_task, shared)
        return shared, shared

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        unfreeze_layer_norms(model)
        hidden = self.config.hidden_dim
        down_keys, up_keys = self.routing(tasks)
        adapters = nn.ModuleDict()
        for site in model.sublayer_sites():
            adapter = Bottleneck(
                lambda: self.projection(site.dim, hidden), lambda: self.projection(hidden, site.dim), down_keys, up_keys
            )
            adapters[site.name.replace(".", "_")] = adapter
            self.hook_handles.append(
                transform_output(site.module, lambda y, a=adapter: a(y, model.router.require()))
            )
        model.method_modules["adapters"] = adapters


class Adapter(AdapterFamily):
    name = "adapter"
    sharing_modes = ("multiple", "half", "single")
    default_sharing = "single"

    def projection(self, d_in: int, d_out: int) -> nn.Module:
        return near_identity_linear(d_in, d_out)
