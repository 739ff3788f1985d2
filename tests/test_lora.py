"""LoRA: paper parameter counts, equivalence with PEFT, trainable set and routing."""


import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import TASKS, assert_gradients_reach_only, distinct_losses_per_task, paper_model, random_batch, tiny_vl_model
from vlbench.config import RunConfig, UserError
from vlbench.methods.lora import LoRA
from vlbench.model import VLModel
from vlbench.params import count_parameters

LM_BIASES = 125_952  # every "bias" parameter of BART-base, LayerNorm biases included


def config(sharing="single", rank=4, **options):
    return RunConfig(method="lora", sharing=sharing, hidden_dim=rank, method_options=tuple(sorted(options.items())))


def tiny(sharing="single", rank=4, **options) -> VLModel:
    model = tiny_vl_model()
    LoRA(config(sharing, rank, **options)).apply(model, TASKS)
    return model


@pytest.mark.parametrize("sharing, paper_percent", [("multiple", 17.72), ("single", 5.93)])
def test_paper_percentages(sharing, paper_percent):
    model = paper_model("lora", sharing, 128)
    counts = count_parameters(model)
    copies = len(TASKS) if sharing == "multiple" else 1
    assert len(model.method_modules["lora"]) == 36  # q and v of 18 attention modules
    assert counts.components["method"]["total"] == copies * 36 * 2 * 768 * 128
    assert counts.components["lm"]["trainable"] == LM_BIASES
    assert counts.percent == pytest.approx(paper_percent, abs=0.01)


def test_matches_peft():
    rank, alpha = 4, 8  # scaling 2, so a wrong scaling shows
    model = tiny(rank=rank, lora_alpha=alpha, lora_dropout=0.0)
    reference = tiny_vl_model().lm  # same seed: the same pretrained weights
    peft_lm = get_peft_model(
        reference, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    # name of each attention module inside the LM, to find the PEFT layer behind each of our sites
    lm_names = {id(m): n for n, m in model.lm.named_modules()}
    sites = model.method_modules["lora"]
    torch.manual_seed(1)
    for attn_name, attn in model.attention_modules():
        for proj in ("q_proj", "v_proj"):
            peft_layer = peft_lm.base_model.model.get_submodule(f"{lm_names[id(attn)]}.{proj}")
            ours = sites[f"{attn_name}.{proj}".replace(".", "_")].pairs["shared"]
            torch.nn.init.normal_(peft_layer.lora_B["default"].weight)  # PEFT's B starts at zero too
            ours.lora_A.weight.data.copy_(peft_layer.lora_A["default"].weight)
            ours.lora_B.weight.data.copy_(peft_layer.lora_B["default"].weight)
    model.eval()
    peft_lm.eval()
    model.router.task = "vqa"
    input_ids = torch.randint(5, 40, (2, 7))
    decoder_input_ids = torch.randint(5, 40, (2, 5))
    with torch.no_grad():
        ours_logits = model.lm(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        peft_logits = peft_lm(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        base_logits = tiny_vl_model().lm.eval()(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    assert not torch.allclose(ours_logits, base_logits, atol=1e-3)  # the updates do act
    assert torch.allclose(ours_logits, peft_logits, atol=1e-5)


def test_training_step_touches_only_intended_parameters():
    model = tiny()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for n in trainable:
        assert n.startswith(("method_modules.lora.", "visual_embedding.")) or (n.startswith("lm.") and "bias" in n)
    assert any("layer_norm.bias" in n for n in trainable)
    assert not any("layer_norm.weight" in n or "embed_tokens" in n for n in trainable)
    model.router.task = "vqa"
    model.loss(random_batch()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_multiple_routes_gradients_to_the_current_task_only():
    assert_gradients_reach_only(tiny("multiple"), "lora", "nlvr")


@pytest.mark.parametrize("sharing, expect_distinct", [("multiple", True), ("single", False)])
def test_routing_by_sharing(sharing, expect_distinct):
    model = tiny(sharing)
    for p in model.method_modules.parameters():  # B is zero at init: make every update non-zero
        torch.nn.init.normal_(p, std=0.5)
    assert distinct_losses_per_task(model) == (len(TASKS) if expect_distinct else 1)


def test_validation():
    with pytest.raises(UserError, match="--hidden-dims"):
        LoRA.validate("single", 0, 64)
    with pytest.raises(UserError, match="--sharing"):
        LoRA.validate("half", 8, 64)
    LoRA.validate("multiple", 8, 64)
