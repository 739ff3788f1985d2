"""BitFit (Ben Zaken et al., ACL 2022): only the LM's bias terms train, plus theta V->L, as in the
Ladder Side-Tuning paper's comparison on this CLIP-BART / CLIP-T5 setup (its VL-T5 `--use_bitfit`).

Which biases. Every parameter of the LM whose own name is `bias`: on BART the biases of every Linear
(attention q/k/v/out projections, fc1, fc2) and of every LayerNorm (their weights stay frozen):
125,952 in BART-base, the same set LoRA's name match trains. BitFit's paper trains all bias terms,
the LayerNorms' included, and so does the LST reference (it unfreezes every name containing `.bias`);
leaving the LayerNorm biases out would be a different, smaller method. Nothing else is a bias here:
BART's `final_logits_bias` is a buffer, not a parameter (zeros in bart-base, not in the reference's
trainable set and not counted by `vlbench params`), so it stays frozen; BART's lm_head has no bias;
T5's `relative_attention_bias` tables are position-bucket embeddings, not bias terms, and stay frozen
(the reference's `.bias` match does not catch them either).

T5 has no bias terms at all, so BitFit as written would train theta V->L alone (the `proj-only`
ablation under another name). A researcher running BitFit on CLIP-T5 expects what the LST paper
reports as BitFit there: the reference adds zero-initialised biases to T5 (every Linear of the
attention and FFN sublayers, and every T5LayerNorm) and trains those. vlbench does the same: each
Linear of the LM's encoder and decoder stacks and each LM layer norm that has no bias gets a
zero-initialised trainable one, held in `method_modules["bitfit"]` (so accounting counts it as the
method's, in the total too) and added to the module's output by a forward hook. At initialisation
the model computes exactly what the pretrained one does. On T5-base that is 250,368 added biases.
On BART nothing is added (its lm_head, outside the stacks, keeps having none).

No sharing modes and no hidden dim (like full fine-tuning); learning rate: the profile's default
(tiny 3e-3, paper 1e-3), inside BitFit's own 1e-4..1e-3 range for BERT; the LST reference uses
3e-3 for VL BitFit, which `--lr` gives.
"""

from __future__ import annotations

import torch
from torch import nn

from vlbench.methods.base import Method, freeze_all_but_visual_embedding
from vlbench.model import VLModel


class AddedBias(nn.Module):
    """A zero-initialised bias added to the output of a module that has none (T5)."""

    def __init__(self, size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return output + self.bias.to(output.dtype)  # the output's dtype, as F.linear's bias under autocast


def lm_bias_parameters(lm: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The LM's own bias terms: every parameter named `bias` (Linear and LayerNorm biases)."""
    return [(name, p) for name, p in lm.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]


def biasless_sites(model: VLModel) -> list[tuple[str, nn.Module, int]]:
    """(name, module, output size) of each Linear of the LM's encoder and decoder stacks and each LM
    layer norm without a bias: where BitFit adds one (every one on T5, none on BART)."""
    sites = []
    lm = model.lm
    stacks = {stack: lm.get_encoder() if stack == "encoder" else lm.get_decoder() for stack in model.family.stacks}
    for stack_name, stack in stacks.items():
        for name, module in stack.named_modules():
            if isinstance(module, nn.Linear) and module.bias is None:
                sites.append((f"{stack_name}.{name}", module, module.out_features))
    norms = {id(m) for m in model.layer_norms()}
    for name, module in model.lm.named_modules():
        if id(module) in norms and getattr(module, "bias", None) is None:
            sites.append((name, module, module.weight.shape[0]))
    return sites


class BitFit(Method):
    name = "bitfit"

    def apply(self, model: VLModel, tasks: tuple[str, ...]) -> None:
        freeze_all_but_visual_embedding(model)
        for _, p in lm_bias_parameters(model.lm):
            p.requires_grad_(True)
        added = nn.ModuleDict()
        for name, module, size in biasless_sites(model):
            bias = AddedBias(size)
            added[name.replace(".", "_")] = bias
            self.hook_handles.append(module.register_forward_hook(lambda _m, _i, output, b=bias: b(output)))
        if added:
            model.method_modules["bitfit"] = added
