"""Method registry: a new method is one module in this package plus one line here."""

from vlbench.config import RunConfig, UserError
from vlbench.methods.ablation import ProjectionAndLayerNorm, ProjectionOnly
from vlbench.methods.adapter import Adapter
from vlbench.methods.base import Method
from vlbench.methods.compacter import Compacter
from vlbench.methods.full import FullFineTuning
from vlbench.methods.hyperformer import Hyperformer
from vlbench.methods.lora import LoRA
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
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"--methods: unknown method '{name}' (choose from {', '.join(METHODS)})")
    return METHODS[name]


def build_vl_model(cfg: RunConfig, lm, feat_dim: int, n_vis_tokens: int) -> VLModel:
    """The VL model around `lm` with the run's method applied (its modules added, its trainable set chosen)."""
    model = VLModel(lm, feat_dim, n_vis_tokens, cfg.pool_size)
    get_method(cfg.method)(cfg).apply(model, cfg.tasks)
    return model
