"""Full fine-tuning: the whole LM (embeddings and tied lm_head included) and theta V->L train;
with `train_vision`, the CLIP encoder too (Table 3)."""

from vlbench.methods.base import VISION_OPTIONS, Method, train_vision_encoder
from vlbench.model import VLModel


class FullFineTuning(Method):
    name = "full"
    option_defaults = dict(VISION_OPTIONS)

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        if self.trains_vision:
            train_vision_encoder(model, self.option("vision_lr"))
