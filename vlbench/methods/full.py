"""Full fine-tuning: the whole LM (embeddings and tied lm_head included) and theta V->L train;
with `train_vision`, the CLIP encoder too (Table 3)."""

from vlbench.methods.base import Method, VisionOptions
from vlbench.model import VLModel


class FullFineTuning(Method):
    name = "full"
    Options = VisionOptions

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        if self.trains_vision:  # Table 3: CLIP trains too, with its own optimiser (param_groups)
            model.vision.requires_grad_(True)
