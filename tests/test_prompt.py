"""Prompt tuning: Table 1 percentages, prefix length, gradients, routing per sharing mode."""

import pytest

from conftest import TASKS, distinct_losses_per_task, paper_model, random_batch, tiny_vl_model
from vlbench.config import RunConfig, UserError
from vlbench.methods.prompt import PromptTuning
from vlbench.params import count_parameters

VISUAL_EMBEDDING = 1_582_848


def apply_prompt(model, sharing, length, **options):
    cfg = RunConfig(method="prompt", sharing=sharing, hidden_dim=length, method_options=tuple(sorted(options.items())))
    PromptTuning(cfg).apply(model, TASKS)
    return model


@pytest.mark.parametrize("sharing, n_prompts, paper_percent", [("multiple", 4, 4.53), ("single", 1, 2.00)])
def test_table1_percentages(sharing, n_prompts, paper_percent):
    counts = count_parameters(paper_model("prompt", sharing, 40))
    per_prompt = 40 * 768 + (768 * 800 + 800) + (800 * 768 + 768)
    assert counts.components["method"] == {"trainable": n_prompts * per_prompt, "total": n_prompts * per_prompt}
    assert counts.trainable == n_prompts * per_prompt + VISUAL_EMBEDDING
    assert counts.percent == pytest.approx(paper_percent, abs=0.01)


def test_encoder_output_grows_by_prompt_length():
    batch = random_batch()
    args = batch["input_ids"], batch["attention_mask"], batch["feats"]
    plain, plain_mask = tiny_vl_model().encode(*args)
    model = apply_prompt(tiny_vl_model(), "single", 7, prompt_mid_dim=16)
    prompted, mask = model.encode(*args)
    assert prompted.last_hidden_state.shape[1] == plain.last_hidden_state.shape[1] + 7
    assert mask.shape[1] == plain_mask.shape[1] + 7


@pytest.mark.parametrize("sharing", ["multiple", "single"])
def test_gradients_only_on_prompts_and_visual_embedding(sharing):
    model = apply_prompt(tiny_vl_model(), sharing, 5, prompt_mid_dim=16)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("method_modules.prompts.", "visual_embedding.")) for n in trainable)
    assert any(n.startswith("visual_embedding.") for n in trainable)
    model.router.task = "caption"
    model.loss(random_batch()).backward()
    # in `multiple` only the current task's prompt takes part in the forward pass
    idle = [t for t in TASKS if t != "caption"] if sharing == "multiple" else []
    idle_prefixes = tuple(f"method_modules.prompts.{t}." for t in idle)
    for n, p in model.named_parameters():
        used = p.requires_grad and not n.startswith(idle_prefixes)
        assert (p.grad is not None) == used, n


@pytest.mark.parametrize("sharing, expect_distinct", [("multiple", True), ("single", False)])
def test_routing_by_sharing(sharing, expect_distinct):
    model = apply_prompt(tiny_vl_model(), sharing, 5, prompt_mid_dim=16).eval()
    prompts = model.method_modules["prompts"]
    assert set(prompts) == (set(TASKS) if sharing == "multiple" else {"shared"})
    assert distinct_losses_per_task(model) == (len(TASKS) if expect_distinct else 1)


def test_multiple_prompts_need_a_current_task():
    model = apply_prompt(tiny_vl_model(), "multiple", 5, prompt_mid_dim=16)
    with pytest.raises(RuntimeError, match="no current task"):
        model.loss(random_batch())


def test_validation():
    PromptTuning.validate("single", 40, 768)
    for length in (0, -3, None):
        with pytest.raises(UserError, match="--hidden-dims"):
            PromptTuning.validate("single", length, 768)
    with pytest.raises(UserError, match="--sharing"):
        PromptTuning.validate("half", 40, 768)
