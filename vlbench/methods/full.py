"""Full fine-tuning: the whole LM (embeddings and tied lm_head included) and theta V->L train."""

from vlbench.methods.base import Method
from vlbench.model import VLModel


class FullFineTuning(Method):
    name = "full"

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
