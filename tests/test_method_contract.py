"""The method contract every method shares: hook handles kept (a method can be detached), parameter
groups declared by the method, strict loading of saved tensors; the baseline registry; the
`beyond` preset and its report rows."""

import copy

import pytest
import torch

from conftest import TASKS, random_batch, tiny_vl_model
from vlbench.baselines import BASELINES, is_baseline
from vlbench.config import RunConfig, UserError
from vlbench.grid import GridRequest, expand
from vlbench.methods import METHODS, get_method, param_groups
from vlbench.report import REFERENCE_METHODS, group_of, row_label

HOOKED = {"adapter": ("single", 8), "compacter": ("single", 8), "hyperformer": (None, 8), "lora": ("single", 4),
          "lst": ("single", 16)}  # fmt: skip


@pytest.mark.parametrize("name", HOOKED)
def test_a_method_keeps_its_hook_handles_and_can_be_detached(name):
    base = tiny_vl_model().eval()
    model = copy.deepcopy(base)
    sharing, dim = HOOKED[name]
    method = get_method(name)(RunConfig(method=name, sharing=sharing, hidden_dim=dim, tasks=TASKS))
    method.apply(model, TASKS)
    with torch.no_grad():  # modules that change the output (several start as the identity)
        for p in model.method_modules.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    batch = random_batch()
    base.router.task = model.router.task = "vqa"
    assert method.hook_handles and not torch.allclose(model(batch), base(batch))
    method.remove_hooks()
    torch.testing.assert_close(model(batch), base(batch))
    assert method.hook_handles == []


def test_param_groups_are_declared_by_the_method():
    model = tiny_vl_model()
    for name in ("full", "adapter", "lst"):
        assert param_groups(RunConfig(method=name, sharing=get_method(name).default_sharing, hidden_dim=16), model) == []


def test_load_is_strict_and_names_the_source():
    model = tiny_vl_model()
    method = get_method("adapter")(RunConfig(method="adapter", sharing="single", hidden_dim=8, tasks=TASKS))
    method.apply(model, TASKS)
    saved = {n: p.detach().clone() + 1 for n, p in model.named_parameters() if p.requires_grad}
    method.load(model, saved, "run/trainable.safetensors")
    assert all(torch.equal(dict(model.named_parameters())[n], t) for n, t in saved.items())
    name = next(iter(saved))
    with pytest.raises(UserError, match=f"run/trainable.safetensors: no tensor for the trainable parameter {name}"):
        method.load(model, {k: v for k, v in saved.items() if k != name}, "run/trainable.safetensors")
    with pytest.raises(UserError, match="run/x: tensor nope is not a parameter"):
        method.load(model, {**saved, "nope": torch.zeros(1)}, "run/x")


def test_baselines_are_one_registry_that_reports_show_for_reference():
    assert "text-only" in BASELINES and is_baseline("text-only") and not is_baseline("full")
    assert set(BASELINES).isdisjoint(METHODS)
    assert REFERENCE_METHODS == tuple(BASELINES) and group_of("text-only") == "reference"
    assert row_label("text-only", None) == BASELINES["text-only"].label


def test_preset_beyond_puts_the_paper_best_rows_beside_the_new_methods():
    configs = expand(GridRequest(preset="beyond"))
    rows = {(c.method, c.sharing, c.hidden_dim, tuple(c.options.items())) for c in configs}
    assert rows == {
        ("full", None, None, ()), ("adapter", "single", 8, ()), ("lora", "single", 8, ()),
        ("lst", "single", 16, ()), ("bitfit", None, None, ()), ("peft", "single", None, (("config", "ia3"),)),
    }  # fmt: skip
    labels = [row_label(c.method, c.sharing, c.options) for c in configs]
    assert "PEFT ia3" in labels and "Ladder Side-Tuning" in labels
    assert {group_of(m) for m in ("lst", "bitfit", "peft")} == {"beyond"}


def test_peft_rows_are_named_after_their_config():
    assert row_label("peft", "single", {"config": "ia3"}) == "PEFT ia3"
    assert row_label("peft", "multiple", {"config": "/data/my_dora.json"}) == "PEFT my_dora (per task)"
