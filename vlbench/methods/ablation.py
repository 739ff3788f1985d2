"""The paper's Table 5 ablations: which components train when no adapter does.

`proj-only` trains only theta V->L (the visual embedding); `proj-ln` adds every LM LayerNorm.
"""

from vlbench.methods.base import Method, freeze_all_but_visual_embedding, unfreeze_layer_norms
from vlbench.model import VLModel


class ProjectionOnly(Method):
    name = "proj-only"

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)


class ProjectionAndLayerNorm(Method):
    name = "proj-ln"

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        unfreeze_layer_norms(model)
