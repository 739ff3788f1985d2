"""Method registry: a new method is one module in this package plus one line here."""

from torch import nn

from vlbench.config import RunConfig, UserError
from vlbench.methods.ablation import ProjectionAndLayerNorm, ProjectionOnly
from vlbench.methods.adapter import Adapter
from vlbench.methods.base import Method
from vlbench.methods.bitfit import BitFit
from vlbench.methods.compacter import Compacter
from vlbench.methods.full import FullFineTuning
from vlbench.methods.hyperformer import Hyperformer
from vlbench.methods.lora import LoRA
from vlbench.methods.lst import LST
from vlbench.methods.peft_tuner import PeftTuner
from vlbench.methods.prompt import PromptTuning
from vlbench.model import VLModel

METHODS: dict[str, type[Method]] = {
    "full": FullFineTuning,
    "adapter": Adapter,
    "hyperformer": Hyperformer,
    "compacter": Compacter,
    "lora": LoRA,
    "prompt": PromptTuning,
    "proj-only": ProjectionOnly,
    "proj-ln": ProjectionAndLayerNorm,
    "bitfit": BitFit,
    "lst": LST,
    "peft": PeftTuner,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"--methods: unknown method '{name}' (choose from {', '.join(METHODS)})")
    return METHODS[name]


def trains_vision(cfg: RunConfig) -> bool:
    """Whether the job's model holds the CLIP encoder and trains it (Table 3) instead of reading features."""
    return get_method(cfg.method)(cfg).trains_vision


def param_groups(cfg: RunConfig, model: VLModel) -> list:
    """The parameters the run's method trains with their own optimiser (`Method.param_groups`)."""
    return get_method(cfg.method)(cfg).param_groups(model)


def build_vl_model(cfg: RunConfig, lm, feat_dim: int, n_vis_tokens: int, vision=None) -> VLModel:
    """The VL model around `lm` with the run's method applied (its modules added, its trainable set chosen).

    `vision` (the CLIP grid encoder) is needed exactly when `trains_vision(cfg)`."""
    method = get_method(cfg.method)(cfg)
    if method.trains_vision != (vision is not None):
        raise ValueError(f"{cfg.label()}: a vision encoder is {'needed' if method.trains_vision else 'not used'}")
    visual = getattr(vision, "visual", None)  # a CLIP ModifiedResNet inside the grid encoder
    if visual is not None and hasattr(visual, "attnpool"):
        visual.attnpool = nn.Identity()  # the grid path skips attention pooling: neither trained nor counted
    model = VLModel(lm, feat_dim, n_vis_tokens, cfg.pool_size, vision=vision)
    method.apply(model, cfg.tasks)
    return model
