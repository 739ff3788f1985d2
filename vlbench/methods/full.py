"""Full fine-tuning: the whole LM (embeddings and tied lm_head included) and theta V->L train;
with `train_vision`, the CLIP encoder too (Table 3)."""

from vlbench.methods.base import Method, VisionOptions, train_vision_encoder
from vlbench.model import VLModel


class FullFineTuning(Method):
    name = "full"
    Options = VisionOptions

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        if self.trains_vision:
            train_vision_encoder(model, self.options.vision_lr)
