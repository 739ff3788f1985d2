"""The paper's Table 5 ablations: which components train when no adapter does.

`proj-only` trains only theta V->L (the visual embedding); `proj-ln` adds every LM LayerNorm.
`proj-only` with `train_vision` is Table 3's "CLIP fine-tuned + BART frozen".
"""

from vlbench.methods.base import (
    Method,
    VisionOptions,
    freeze_all_but_visual_embedding,
    unfreeze_layer_norms,
)
from vlbench.model import VLModel


class ProjectionOnly(Method):
    name = "proj-only"
    Options = VisionOptions

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        if self.trains_vision:  # Table 3: CLIP trains too, with its own optimiser (param_groups)
            model.vision.requires_grad_(True)


class ProjectionAndLayerNorm(Method):
    name = "proj-ln"

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        unfreeze_layer_norms(model)
