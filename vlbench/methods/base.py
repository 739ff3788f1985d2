"""The method interface: every parameter-efficient method (and full fine-tuning) implements it.

A method is configured from a RunConfig, then `apply(model, tasks)` adds its modules to
`model.method_modules`, attaches them through hooks, and sets `requires_grad` on exactly the
parameters that train. The engine only ever sees the resulting model.

Sharing modes are routing, not separate classes: `multiple` keeps one module per task, `single`
one for all tasks, `half` shares the up-projection and keeps the down-projection per task.

What a method may declare besides `apply`: `param_groups(model)`, parameters it trains with their own
optimiser (Table 3's CLIP: plain SGD at its own learning rate), which the engine builds apart from the
AdamW over the rest; `load(model, tensors)`, how its saved trainable tensors go back into a freshly
built model (by default: by name, every trainable parameter, shapes checked). `apply` keeps the
handles of the hooks it registers in `self.hook_handles` (`remove_hooks()` detaches the method).

Options (the sweep flag `--option key=value`): each method declares its knobs as a frozen dataclass
`Options`, one field per knob made with `int_option`/`float_option`/`bool_option`/`choice_option`/`str_option`,
which state the default and the constraint once. `Method.parse_options` checks what the user gave
(values arrive JSON-decoded) and returns the typed object, defaults filled in; a method reads it as
`self.options`. A RunConfig keeps only the pairs the user gave, so defaults never enter a run's key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from vlbench.config import RunConfig, UserError
from vlbench.model import VLModel


def int_option(default: int, *, minimum: int = 1, help: str = "") -> Any:
    """An integer knob, at least `minimum` (widths, ranks, lengths, factors: 1)."""
    return dataclasses.field(default=default, metadata={"kind": "int", "minimum": minimum, "help": help})


def float_option(
    default: float, *, low: float = 0.0, high: float | None = None, closed_low: bool = False, help: str = ""
) -> Any:
    """A finite real knob in (low, high), or [low, high) with `closed_low`; an integer value is accepted."""
    metadata = {"kind": "float", "low": low, "high": high, "closed_low": closed_low, "help": help}
    return dataclasses.field(default=default, metadata=metadata)


def bool_option(default: bool, *, help: str = "") -> Any:
    return dataclasses.field(default=default, metadata={"kind": "bool", "help": help})


def choice_option(default: str, choices: tuple[str, ...], *, help: str = "") -> Any:
    return dataclasses.field(default=default, metadata={"kind": "choice", "choices": choices, "help": help})


def str_option(default: str, *, help: str = "") -> Any:
    """A text knob (a file path, a name)."""
    return dataclasses.field(default=default, metadata={"kind": "str", "help": help})


def shown(value: Any) -> str:
    """A value as the user wrote it on the command line: text quoted, JSON literals as JSON."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return repr(value)  # nan, inf, 1.5
    try:
        return json.dumps(value)  # true, null, [1, 2]
    except (TypeError, ValueError):
        return repr(value)


def check_option(name: str, value: Any, spec: dataclasses.Field) -> Any:
    """`value` for the option `name` as its field declares it (an int for a float knob becomes a float);
    UserError naming `--option name` otherwise."""
    flag = f"--option {name}"
    meta = spec.metadata
    kind = meta["kind"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{flag}: expected true or false, got {shown(value)}")
        return value
    if kind == "choice":
        choices = meta["choices"]
        if not isinstance(value, str) or value not in choices:
            quoted = [repr(c) for c in choices]
            expected = " or ".join(quoted) if len(quoted) <= 2 else "one of " + ", ".join(quoted)
            raise UserError(f"{flag}: expected {expected}, got {shown(value)}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{flag}: expected text, got {shown(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{flag}: expected an integer, got {shown(value)}")
        minimum = meta["minimum"]
        if value < minimum:
            wanted = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
            raise UserError(f"{flag}: must be {wanted}, got {value}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{flag}: expected a number, got {shown(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        low, high, closed_low = meta["low"], meta["high"], meta["closed_low"]
        above = number >= low if closed_low else number > low
        below = number < high if high is not None else True
        if not (math.isfinite(number) and above and below):
            if high is not None:
                wanted = f"in {'[' if closed_low else '('}{low:g}, {high:g})"
            elif low == 0 and not closed_low:
                wanted = "a finite positive number"
            else:
                wanted = f"a finite number {'>=' if closed_low else '>'} {low:g}"
            raise UserError(f"{flag}: must be {wanted}, got {shown(value)}")
        return number
    raise TypeError(f"option {name}: unknown kind {kind!r}")  # a method declared a field without a helper


@dataclass(frozen=True)
class NoOptions:
    """The options of a method without knobs."""


@dataclass(frozen=True)
class VisionOptions:
    """Table 3: the CLIP encoder trained too, with SGD at its own (much smaller) learning rate, as the
    paper's footnote 3 (SGD 1e-6 on CLIP, AdamW on the rest). Methods that offer it subclass these."""

    train_vision: bool = bool_option(False, help="train the CLIP encoder with the LM (needs the images)")
    vision_lr: float = float_option(1e-6, help="the CLIP encoder's SGD learning rate, with train_vision")


@dataclass(frozen=True)
class ParamGroup:
    """Trainable parameters with their own optimiser: "sgd" (plain) or "adamw" at `lr` (None: the run's)."""

    name: str
    params: tuple
    optimizer: str = "adamw"
    lr: float | None = None


class Method:
    name: ClassVar[str]
    sharing_modes: ClassVar[tuple[str, ...]] = ()  # empty: the method has no per-task modules
    default_sharing: ClassVar[str | None] = None
    uses_hidden_dim: ClassVar[bool] = False
    hidden_dim_meaning: ClassVar[str] = ""  # "bottleneck size", "rank", "prompt length"
    Options: ClassVar[type] = NoOptions  # the method's knobs (sweep flag --option key=value), a frozen dataclass
    version: ClassVar[int] = 1  # bump when the method's modules, placement or trainable set change (fingerprints)

    def __init__(self, config: RunConfig):
        self.config = config
        self.options = self.parse_options(config.options)
        self.hook_handles: list = []  # what `apply` registered, so the method can be detached

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def parse_options(cls, given: Mapping[str, Any] | None = None) -> Any:
        """The typed options from the pairs the user gave (JSON-decoded values), defaults for the rest."""
        if isinstance(given, cls.Options):
            return given
        specs = {f.name: f for f in dataclasses.fields(cls.Options)}
        values = {}
        for key, value in (given or {}).items():
            if key not in specs:
                known = ", ".join(specs) or "none"
                raise UserError(f"--option: {cls.name} has no option '{key}' (its options: {known})")
            values[key] = check_option(key, value, specs[key])
        return cls.Options(**values)

    @classmethod
    def hidden_dims(cls, given: tuple[int, ...] | None, default: int, options: Any) -> tuple[int | None, ...]:
        """The hidden dims a sweep runs this method at: `given` (--hidden-dims), else the profile's `default`;
        (None,) for a method without one, so its jobs do not split by hidden dim."""
        if not cls.uses_hidden_dim:
            return (None,)
        return given or (default,)

    @classmethod
    def fingerprint_detail(cls, options: Mapping[str, Any]) -> str:
        """What, beyond `version`, the run's fingerprint names about the method's code and inputs for these
        option pairs (e.g. a digest of a file an option names); empty for most methods."""
        return ""

    @classmethod
    def validate(cls, sharing: str | None, hidden_dim: int | None, d_model: int, options=None) -> Any:
        """Raise UserError (naming the flag) for a combination that makes no sense; return the parsed options.

        `options` is the user's pairs (a mapping) or an already parsed `Options`."""
        parsed = cls.parse_options(options)
        if cls.sharing_modes and sharing not in cls.sharing_modes:
            raise UserError(
                f"--sharing: '{sharing}' is not available for {cls.name} (choose from {', '.join(cls.sharing_modes)})"
            )
        if cls.uses_hidden_dim and (hidden_dim is None or hidden_dim <= 0):
            raise UserError(f"--hidden-dims: {cls.name} needs a positive {cls.hidden_dim_meaning}, got {hidden_dim}")
        cls.check(sharing, hidden_dim, d_model, parsed)
        return parsed

    @classmethod
    def check(cls, sharing: str | None, hidden_dim: int | None, d_model: int, options: Any) -> None:
        """A method's own checks of its options against the rest of the job (after each option's own)."""

    @property
    def trains_vision(self) -> bool:
        """Whether the CLIP encoder trains with the LM (Table 3): then it is part of the model, fed pixels."""
        return bool(getattr(self.options, "train_vision", False))

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        raise NotImplementedError

    def param_groups(self, model: VLModel) -> list[ParamGroup]:
        """Table 3: a trained CLIP encoder gets plain SGD at `vision_lr` (the paper's footnote 3)."""
        if not self.trains_vision:
            return []
        return [ParamGroup("vision", tuple(model.vision.parameters()), "sgd", self.options.vision_lr)]

    def load(self, model: VLModel, tensors: Mapping[str, Any], source: str) -> None:
        """Copy a run's saved trainable tensors into `model` (built by `apply`): each must be a parameter
        of the same shape, and every trainable parameter must be there; else a UserError naming `source`
        and the tensor, with the model untouched."""
        import torch

        params = dict(model.named_parameters())
        for name, tensor in tensors.items():
            if name not in params:
                raise UserError(f"{source}: tensor {name} is not a parameter of the model this run's config builds")
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise UserError(
                    f"{source}: tensor {name} has shape {list(tensor.shape)}, the model's parameter {list(params[name].shape)}"
                )
        missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{source}: no tensor for the trainable parameter {missing[0]}{more}")
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor)

    def remove_hooks(self) -> None:
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles.clear()


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


def transform_output(module: nn.Module, fn):
    """Apply `fn` to a module's output tensor (the first element when the module returns a tuple);
    the hook's handle."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return module.register_forward_hook(hook)
