"""Any Hugging Face PEFT tuner on the LM, from a PEFT config file: `--methods peft --option config=FILE`.

FILE is a PEFT `adapter_config.json` (what `PeftConfig.save_pretrained` writes: `peft_type`,
`target_modules` and the tuner's own fields), or the name of a config shipped in `peft_configs/`:
  * `lora`: LoRA r 8 (PEFT's default), alpha 32 and dropout 0.1 (vlbench's `lora` defaults) on the
    query and value projections, with PEFT's `bias: none`: unlike vlbench's `lora`, no LM bias trains;
  * `dora`: the same with `use_dora` (a trained magnitude per output unit);
  * `ia3`: IA3 on the keys, values and the FFN's inner activations (the IA3 paper's choice and PEFT's
    T5 default; PEFT's own BART default scales the queries instead of the keys);
  * `vera`: VeRA r 256 (PEFT's default) on the query and value projections.
Their `target_modules` are lists of module names that PEFT matches as name suffixes, BART's and
T5's together (`q_proj`, `v_proj` / `q`, `v`; `k_proj`, `fc2` / `k`, `wo`): each LM has only its own.
A bare name that is not one of these is read as a file path. Every field is PEFT's, checked by PEFT;
a field the installed PEFT's config class does not have is refused (not dropped with a warning, as
PEFT does for configs of newer versions), and so are `modules_to_save` and `trainable_token_indices`
(they train copies of whole LM modules or embedding rows), and the tuners that need PeftModel or its
training loop (`UNSUPPORTED_TYPES`: AdaLoRA, Poly, ...; prompt learning). `inference_mode` is ignored:
a config describes a tuner to train. Any mistake in the file is a one-line UserError naming `--option config`.

What trains: the tuner's parameters (PEFT's own choice, e.g. LoRA's A and B, not its frozen parts)
and, as `bias` says (`all`, `lora_only`, ...), LM biases, applied by PEFT (which allows a bias with
one adapter only: with `multiple` it refuses); theta V->L as in every method; nothing else of the LM. The count is PEFT's `get_nb_trainable_parameters()` of the same
tuner plus theta V->L. The tuner is injected in place into `model.lm` with PEFT's tuner class (the
LM is not wrapped in a PeftModel, so the VL model calls it as before); what PEFT adds to each
layer (everything on a tuner layer but its wrapped base layer, PEFT's own definition) is also
registered under `method_modules["peft"]`, so accounting counts it as the method's.

Hidden dim: the config's rank `r`, where the tuner has one (LoRA, DoRA, VeRA, LoHa, ...);
`--hidden-dims` replaces it, and without the flag a job runs at the file's own r. A tuner without a
rank (IA3, OFT by block size) runs without a hidden dim, and `--hidden-dims` is then an error.

Sharing: `single` (default), one adapter named "shared" for every task; `multiple`, one adapter
per task, named after it. The active one is switched at the tuner layers (a forward pre-hook on
each, reading `router.task`), the one place every path goes through: the BART encoder layers the VL
model calls directly, `lm.forward` and decoding alike. PEFT's `set_adapter` also freezes the other
adapters; every adapter is made trainable again at once, so the optimiser, the checkpoint and the
count see all of them throughout, and a task's batch gives gradients to its own adapter only.

Fingerprint: the config file's digest, so editing it retrains. Tested with peft 0.21.2 and
transformers 5.24: LoRA, DoRA, IA3 and VeRA on BART and T5 (tests/test_peft_tuner.py); every other
tuner of peft 0.21.2, at its defaults on the tiny BART's q_proj/v_proj, either runs forward and
backward in both sharing modes or is refused with a UserError. Needs peft >= 0.18 (set_requires_grad).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
from peft import PeftConfig, PeftType
from peft.functional import set_requires_grad
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from vlbench.config import UserError
from vlbench.fingerprint import files_digest
from vlbench.methods.base import Method, freeze_all_but_visual_embedding, str_option
from vlbench.model import VLModel

BUNDLED = Path(__file__).parent / "peft_configs"
BUNDLED_NAMES = tuple(sorted(p.stem for p in BUNDLED.glob("*.json")))
# how PEFT says a config does not fit the model: a field's value, no target matched, a bias it lacks,
# a tuner's missing extra package
PEFT_ERRORS = (TypeError, ValueError, NotImplementedError, ImportError)
UNSUPPORTED_FIELDS = ("modules_to_save", "trainable_token_indices")
UNSUPPORTED_TYPES = {  # tuners that need what only PeftModel and its training loop provide
    PeftType.ADALORA: "its ranks are reallocated by PEFT's training loop, which vlbench does not run",
    PeftType.POLY: "it routes by the task ids PeftModel's forward passes (vlbench's sharing=multiple routes by task)",
    PeftType.SHADOW: "it runs in PeftModel's forward (peft.inject_adapter_in_model refuses it too)",
    PeftType.TRAINABLE_TOKENS: "it trains rows of the embedding table, which vlbench leaves frozen",
}


def config_path(value: str) -> Path:
    """A bundled config's file for its name, else `value` as a path."""
    return BUNDLED / f"{value}.json" if value in BUNDLED_NAMES else Path(value)


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def load_config(value: str, hidden_dim: int | None = None) -> PeftConfig:
    """The PEFT config `value` names (a file or a bundled name), its `r` set to `hidden_dim` if given;
    a one-line UserError for anything wrong with it."""
    if not value:
        raise UserError(
            "--option config: peft needs a PEFT config: a JSON file (adapter_config.json) "
            f"or one of {', '.join(BUNDLED_NAMES)}"
        )

    def bad(reason: str) -> UserError:
        return UserError(f"--option config: {value}: {reason}")

    path = config_path(value)
    try:
        fields = json.loads(path.read_text())
    except OSError as e:
        raise bad(f"cannot read {path} ({e.strerror or one_line(e)})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"not JSON ({one_line(e)})") from None
    if not isinstance(fields, dict) or "peft_type" not in fields:
        raise bad("not a PEFT config (no peft_type)")
    try:
        peft_type = PeftType(fields["peft_type"])
    except ValueError:
        raise bad(f"unknown peft_type {fields['peft_type']!r} (peft {peft.__version__})") from None
    if not issubclass(PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type, object), BaseTuner):  # prompt learning
        raise bad(f"{peft_type.value} is not a tuner PEFT injects into a model's layers (it needs a PeftModel)")
    if peft_type in UNSUPPORTED_TYPES:
        raise bad(f"{peft_type.value} is not supported: {UNSUPPORTED_TYPES[peft_type]}")
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise bad(f"{config_cls.__name__} of peft {peft.__version__} has no field {unknown[0]!r}")
    for name in UNSUPPORTED_FIELDS:
        if fields.get(name):
            raise bad(f"{name} is not supported (vlbench trains the tuner and theta V->L, no copies of LM modules)")
    if hidden_dim is not None:
        if "r" not in known:
            raise UserError(f"--hidden-dims: {value} ({peft_type.value}) has no rank r; drop --hidden-dims")
        fields["r"] = hidden_dim
    fields["inference_mode"] = False  # a saved adapter's config says true; here the tuner trains
    try:
        return config_cls(**fields)
    except PEFT_ERRORS as e:
        raise bad(one_line(e)) from None


def rank_of(config: PeftConfig) -> int | None:
    """The config's rank r, None for a tuner without one (IA3; OFT sized by block size has r 0)."""
    r = getattr(config, "r", None)
    return r if isinstance(r, int) and r > 0 else None


def inject(config: PeftConfig, lm: nn.Module, names: tuple[str, ...], value: str) -> None:
    """One adapter per name injected into `lm` in place, through one tuner as PeftModel.add_adapter
    does (VeRA's shared projections live on it; `inject_adapter_in_model` refuses such tuners)."""
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    try:
        tuner = tuner_cls(lm, copy.deepcopy(config), adapter_name=names[0])
        for name in names[1:]:
            tuner.peft_config[name] = copy.deepcopy(config)
            tuner.inject_adapter(lm, name)
    except PEFT_ERRORS as e:
        raise UserError(f"--option config: {value}: {one_line(e)}") from None


def tuner_layers(lm: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    return [(name, m) for name, m in lm.named_modules() if isinstance(m, BaseTunerLayer)]


def added_modules(lm: nn.Module) -> nn.ModuleDict:
    """What the tuner added to each of its layers: every child holding parameters but the base layer."""
    added = nn.ModuleDict()
    for name, layer in tuner_layers(lm):
        for child_name, child in layer.named_children():
            if child_name != "base_layer" and next(child.parameters(), None) is not None:
                added[f"{name}.{child_name}".replace(".", "_")] = child
    return added


def activate(layer: BaseTunerLayer, task: str, names: tuple[str, ...]) -> None:
    """Make `task`'s adapter the active one of `layer`, every adapter staying trainable."""
    if layer.active_adapters != [task]:
        layer.set_adapter(task)  # which also sets requires_grad False on the other adapters: undo that
        layer.set_requires_grad(names, True)


class PeftTuner(Method):
    name = "peft"
    sharing_modes = ("multiple", "single")
    default_sharing = "single"
    hidden_dim_meaning = "rank"  # optional (uses_hidden_dim stays False): the config's r, where it has one

    @dataclass(frozen=True)
    class Options:
        config: str = str_option(
            "", help=f"a PEFT adapter_config.json, or a bundled config: {', '.join(BUNDLED_NAMES)} (required)"
        )

    @classmethod
    def hidden_dims(cls, given: tuple[int, ...] | None, default: int, options: Any) -> tuple[int | None, ...]:
        """--hidden-dims, else the config's own r (None for a tuner without one); `check` refuses dims
        for a config without r."""
        return given or (rank_of(load_config(options.config)),)

    @classmethod
    def check(cls, sharing: str | None, hidden_dim: int | None, d_model: int, options: Any) -> None:
        load_config(options.config, hidden_dim)

    @classmethod
    def fingerprint_detail(cls, options: Mapping[str, Any]) -> str:
        """The config file's digest: the file is the method's code here."""
        value = cls.parse_options(options).config
        return f"config {files_digest([config_path(value)])}"

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        value = self.options.config
        config = load_config(value, self.config.hidden_dim)
        names = tasks if self.config.sharing == "multiple" else ("shared",)
        freeze_all_but_visual_embedding(model)  # first: PEFT then unfreezes its adapters and `bias`
        inject(config, model.lm, names, value)
        set_requires_grad(model.lm, names, True)  # PEFT leaves only the first adapter trainable
        model.method_modules["peft"] = added_modules(model.lm)
        if self.config.sharing == "multiple":
            for _, layer in tuner_layers(model.lm):
                self.hook_handles.append(
                    layer.register_forward_pre_hook(
                        lambda module, _inputs: activate(module, model.router.require(), names)
                    )
                )

