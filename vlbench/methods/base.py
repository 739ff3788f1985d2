"""The method interface: every parameter-efficient method (and full fine-tuning) implements it.

A method is configured from a RunConfig, then `apply(model, tasks)` adds its modules to
`model.method_modules`, attaches them through hooks, and sets `requires_grad` on exactly the
parameters that train. The engine only ever sees the resulting model.

Sharing modes are routing, not separate classes: `multiple` keeps one module per task, `single`
one for all tasks, `half` shares the up-projection and keeps the down-projection per task.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from vlbench.config import RunConfig, UserError
from vlbench.model import VLModel


class Method:
    name: ClassVar[str]
    sharing_modes: ClassVar[tuple[str, ...]] = ()  # empty: the method has no per-task modules
    default_sharing: ClassVar[str | None] = None
    uses_hidden_dim: ClassVar[bool] = False
    hidden_dim_meaning: ClassVar[str] = ""  # "bottleneck size", "rank", "prompt length"
    option_defaults: ClassVar[dict[str, Any]] = {}  # the method's knobs (sweep flag --option key=value)

    def __init__(self, config: RunConfig):
        self.config = config

    @classmethod
    def validate(cls, sharing: str | None, hidden_dim: int | None, d_model: int, options: dict | None = None) -> None:
        """Raise UserError (naming the flag) for a combination that makes no sense."""
        for key in options or {}:
            if key not in cls.option_defaults:
                known = ", ".join(cls.option_defaults) or "none"
                raise UserError(f"--option: {cls.name} has no option '{key}' (its options: {known})")
        if cls.sharing_modes and sharing not in cls.sharing_modes:
            raise UserError(
                f"--sharing: '{sharing}' is not available for {cls.name} (choose from {', '.join(cls.sharing_modes)})"
            )
        if cls.uses_hidden_dim and (hidden_dim is None or hidden_dim <= 0):
            raise UserError(f"--hidden-dims: {cls.name} needs a positive {cls.hidden_dim_meaning}, got {hidden_dim}")

    def option(self, key: str) -> Any:
        return self.config.options.get(key, self.option_defaults[key])

    @property
    def trains_vision(self) -> bool:
        """Whether the CLIP encoder trains with the LM (Table 3): then it is part of the model, fed pixels."""
        return bool(self.config.options.get("train_vision", False))

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        raise NotImplementedError


# Table 3: the CLIP encoder trained too, with SGD at its own (much smaller) learning rate, as the paper's
# footnote 3 (SGD 1e-6 on CLIP, AdamW on the rest). Methods that offer it merge these into option_defaults.
VISION_OPTIONS = {"train_vision": False, "vision_lr": 1e-6}


def train_vision_encoder(model: VLModel, lr: float) -> None:
    """Table 3: the CLIP encoder inside the model trains too, at its own learning rate."""
    model.vision.requires_grad_(True)
    model.vision_lr = lr


def freeze_all_but_visual_embedding(model: VLModel) -> None:
    """The starting point of every PEFT method: the LM frozen, theta V->L trainable."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.visual_embedding.parameters():
        p.requires_grad_(True)


def unfreeze_layer_norms(model: VLModel) -> None:
    for ln in model.layer_norms():
        for p in ln.parameters():
            p.requires_grad_(True)


def near_identity_linear(d_in: int, d_out: int) -> nn.Linear:
    """A Linear with small normal weights and zero bias (the reference adapters' and Hyperformer's init),
    so a freshly added module barely changes the frozen LM it is attached to."""
    linear = nn.Linear(d_in, d_out)
    nn.init.normal_(linear.weight, std=1e-2)
    nn.init.zeros_(linear.bias)
    return linear


def transform_output(module: nn.Module, fn) -> None:
    """Apply `fn` to a module's output tensor (the first element when the module returns a tuple)."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    module.register_forward_hook(hook)
