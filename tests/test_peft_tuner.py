"""The `peft` method: any PEFT tuner on the LM from a config file. Equivalence with vlbench's LoRA,
PEFT's own trainable count, per-task adapters, training steps, bad files, hidden dims, fingerprint."""

import json

import pytest
import torch
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from typer.testing import CliRunner

from conftest import FEAT_DIM, TASKS, distinct_losses_per_task, random_batch, tiny_vl_model, trainable_names, training_step
from vlbench.backbones import BACKBONES, build_lm_from_config
from vlbench.cli import app
from vlbench.config import OptimConfig, RunConfig, UserError
from vlbench.engine import build_optimizer
from vlbench.fingerprint import fingerprint
from vlbench.grid import GridRequest, expand
from vlbench.methods.lora import LoRA
from vlbench.methods.peft_tuner import PeftTuner, load_config
from vlbench.model import VLModel
from vlbench.params import count_parameters

BUNDLED = ("lora", "ia3", "dora", "vera")


def tiny_t5_model(seed: int = 0) -> VLModel:
    torch.manual_seed(seed)
    lm = build_lm_from_config(BACKBONES["tiny-t5"], vocab_size=40)
    return VLModel(lm, FEAT_DIM, BACKBONES["tiny-t5"].n_vis_tokens, pool_size=3)


def run_config(config: str, sharing: str = "single", hidden_dim=None) -> RunConfig:
    return RunConfig(method="peft", sharing=sharing, hidden_dim=hidden_dim, method_options=(("config", config),))


def with_peft(config: str, sharing: str = "single", make=tiny_vl_model, hidden_dim=None) -> VLModel:
    model = make()
    PeftTuner(run_config(config, sharing, hidden_dim)).apply(model, TASKS)
    return model


def write(tmp_path, fields, name="adapter_config.json") -> str:
    path = tmp_path / name
    path.write_text(fields if isinstance(fields, str) else json.dumps(fields))
    return str(path)


def visual_embedding_size(model: VLModel) -> int:
    return sum(p.numel() for p in model.visual_embedding.parameters())


def test_lora_through_peft_equals_vlbench_lora(tmp_path):
    """Same weights, r 4, alpha 8 (scaling 2), dropout 0, q and v: the same per-example losses. vlbench's
    LoRA also trains every LM bias; PEFT's with bias "none" trains none, so its count is that much smaller."""
    file = write(tmp_path, {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                            "target_modules": ["q_proj", "v_proj"]})  # fmt: skip
    ours = tiny_vl_model()
    options = (("lora_alpha", 8), ("lora_dropout", 0.0))
    LoRA(RunConfig(method="lora", sharing="single", hidden_dim=4, method_options=options)).apply(ours, TASKS)
    theirs = with_peft(file)
    sites = ours.method_modules["lora"]
    torch.manual_seed(1)
    for (attn_name, *_), (_, *peft_layers) in zip(ours.query_value_projections(), theirs.query_value_projections()):
        for proj, peft_layer in zip(("q_proj", "v_proj"), peft_layers):
            torch.nn.init.normal_(peft_layer.lora_B["shared"].weight)  # PEFT's B starts at zero too
            pair = sites[f"{attn_name}.{proj}".replace(".", "_")].pairs["shared"]
            pair.lora_A.weight.data.copy_(peft_layer.lora_A["shared"].weight)
            pair.lora_B.weight.data.copy_(peft_layer.lora_B["shared"].weight)
    base = tiny_vl_model()
    batch = random_batch()
    with torch.no_grad():
        for model in (ours, theirs, base):
            model.eval()
            model.router.task = "vqa"
        ours_losses, peft_losses = ours(batch), theirs(batch)
        assert not torch.allclose(peft_losses, base(batch), atol=1e-3)  # the updates act
        assert torch.allclose(ours_losses, peft_losses, atol=1e-6)
    lm_biases = sum(p.numel() for n, p in base.lm.named_parameters() if "bias" in n)
    assert lm_biases > 0
    assert count_parameters(theirs).trainable == count_parameters(ours).trainable - lm_biases
    assert count_parameters(theirs).components["method"] == count_parameters(ours).components["method"]


@pytest.mark.parametrize("make", [tiny_vl_model, tiny_t5_model], ids=["bart", "t5"])
@pytest.mark.parametrize("config", BUNDLED)
def test_count_is_peft_trainable_parameters_plus_visual_embedding(config, make):
    model = with_peft(config, make=make)
    reference = get_peft_model(make().lm, load_config(config))  # an identical LM, PEFT's own wrapper
    peft_trainable, _ = reference.get_nb_trainable_parameters()
    counts = count_parameters(model)
    assert counts.trainable == peft_trainable + visual_embedding_size(model)
    # the tuner's parameters are the method's (bias "none": no LM parameter trains)
    assert counts.components["method"]["trainable"] == peft_trainable > 0
    assert counts.components["lm"]["trainable"] == 0
    assert counts.total == count_parameters(make()).total + counts.components["method"]["total"]


def test_bias_field_is_applied_by_peft(tmp_path):
    file = write(tmp_path, {"peft_type": "LORA", "r": 2, "bias": "lora_only", "target_modules": ["q_proj"]})
    model = with_peft(file)
    lm_trainable = {n for n, p in model.lm.named_parameters() if p.requires_grad and "lora_" not in n}
    assert lm_trainable and all(n.endswith("q_proj.base_layer.bias") for n in lm_trainable)
    peft_trainable, _ = get_peft_model(tiny_vl_model().lm, load_config(file)).get_nb_trainable_parameters()
    assert count_parameters(model).trainable == peft_trainable + visual_embedding_size(model)


def adapter_params(model: VLModel) -> dict[str, torch.nn.Parameter]:
    return dict(model.method_modules["peft"].named_parameters())


def randomise(model: VLModel) -> None:
    """LoRA's B starts at zero: make every adapter act, and differently."""
    with torch.no_grad():
        for p in model.method_modules["peft"].parameters():
            torch.nn.init.normal_(p, std=0.5)


def test_multiple_has_one_adapter_per_task_switched_by_the_router():
    model = with_peft("lora", "multiple")
    layers = [m for m in model.lm.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(set(layer.lora_A) == set(TASKS) for layer in layers)
    randomise(model)
    assert distinct_losses_per_task(model) == len(TASKS)
    assert all(p.requires_grad for p in adapter_params(model).values())  # every task's, after switching
    model.router.task = "gqa"  # generation goes through the same switch
    model.generate(random_batch(), num_beams=2, max_new_tokens=3)
    assert all(layer.active_adapters == ["gqa"] for layer in layers)
    assert all(p.requires_grad for p in adapter_params(model).values())
    model.router.task = None
    with pytest.raises(RuntimeError, match="no current task"):
        model.loss(random_batch())


def test_single_shares_one_adapter():
    model = with_peft("lora", "single")
    randomise(model)
    assert distinct_losses_per_task(model) == 1
    assert {n.split(".")[1] for n in adapter_params(model)} == {"shared"}


def test_a_step_on_one_task_changes_only_its_adapter_and_the_visual_embedding():
    model = with_peft("lora", "multiple")
    randomise(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("visual_embedding.")} == {
        n for n in trainable if n.startswith("lm.") and ".lora_" in n
    }  # the optimiser and the checkpoint meet the adapters under their LM names, every task's
    optimizers, _ = build_optimizer(model, OptimConfig(), total_steps=10)  # the engine's AdamW
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.router.task = "nlvr"
    model.loss(random_batch()).backward()
    optimizers[0].step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    nlvr = {n for n in trainable if ".nlvr." in n}
    assert nlvr and changed - {n for n in changed if n.startswith("visual_embedding.")} == nlvr


@pytest.mark.parametrize("make", [tiny_vl_model, tiny_t5_model], ids=["bart", "t5"])
@pytest.mark.parametrize("config", BUNDLED)
def test_training_step_changes_only_trainable_parameters(config, make):
    model = with_peft(config, make=make)
    before, changed = training_step(model)  # checks that gradients reach exactly the trainable parameters
    trainable = trainable_names(model)
    assert changed <= trainable
    assert any(n.startswith("lm.") and ".shared" in n for n in changed)  # the adapter trained
    for n, p in model.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), n


def test_checkpointed_parameters_restore_the_model():
    """The checkpoint keeps the trainable parameters by name: a fresh model with them computes the same."""
    trained = with_peft("dora", "multiple")
    randomise(trained)
    saved = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
    fresh = with_peft("dora", "multiple")
    with torch.no_grad():
        for n, p in fresh.named_parameters():
            if p.requires_grad:
                p.copy_(saved.pop(n))
    assert not saved
    trained.eval(), fresh.eval()
    trained.router.task = fresh.router.task = "caption"
    batch = random_batch()
    assert torch.equal(trained(batch), fresh(batch))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        ("{not json", "not JSON"),
        ([1, 2], "no peft_type"),
        ({"peft_type": "NOPE"}, "unknown peft_type 'NOPE'"),
        ({"peft_type": "PREFIX_TUNING"}, "needs a PeftModel"),
        ({"peft_type": "ADALORA", "total_step": 10}, "ADALORA is not supported"),
        ({"peft_type": "LORA", "target_module": ["q_proj"]}, "has no field 'target_module'"),
        ({"peft_type": "LORA", "target_modules": ["q_proj"], "layers_pattern": "layers"}, "layers_to_transform"),
        ({"peft_type": "LORA", "target_modules": ["q_proj"], "bias": "some"}, "bias"),
        ({"peft_type": "LORA", "target_modules": ["query"]}, "not found in the base model"),
        ({"peft_type": "LORA", "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_a_bad_config_file_is_a_one_line_error_naming_the_option_and_the_file(tmp_path, content, message):
    file = str(tmp_path / "missing.json") if content is None else write(tmp_path, content)
    with pytest.raises(UserError, match=message) as error:
        PeftTuner.validate("single", None, 32, {"config": file})
        with_peft(file)
    text = str(error.value)
    assert text.startswith(f"--option config: {file}: ") and "\n" not in text


def test_the_cli_reports_a_bad_file_in_one_line(tmp_path):
    file = write(tmp_path, {"peft_type": "LORA", "target_modules": ["query"]})
    result = CliRunner().invoke(app, ["params", "--profile", "tiny", "--methods", "peft", "--option", f"config={file}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"--option config: {file}: " in result.output and len(result.output.strip().splitlines()) == 1


def test_config_is_required_and_text():
    with pytest.raises(UserError, match="--option config: peft needs a PEFT config"):
        expand(GridRequest(methods=("peft",)))
    with pytest.raises(UserError, match="--option config: expected text"):
        PeftTuner.parse_options({"config": 3})


def test_hidden_dims_set_r_and_default_to_the_config_r():
    (default,) = expand(GridRequest(methods=("peft",), options=(("config", "lora"),)))
    assert default.hidden_dim == 8  # lora.json's own r
    configs = expand(GridRequest(methods=("peft",), options=(("config", "vera"),), hidden_dims=(4, 16)))
    assert [c.hidden_dim for c in configs] == [4, 16]
    model = tiny_vl_model()
    PeftTuner(configs[0]).apply(model, TASKS)
    layers = [m for m in model.lm.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(layer.r["shared"] == 4 for layer in layers)
    assert all(layer.vera_lambda_d["shared"].numel() == 4 for layer in layers)


def test_a_config_without_rank_has_no_hidden_dim():
    (cfg,) = expand(GridRequest(methods=("peft",), options=(("config", "ia3"),)))
    assert cfg.hidden_dim is None
    with pytest.raises(UserError, match="--hidden-dims: ia3 .*has no rank"):
        expand(GridRequest(methods=("peft",), options=(("config", "ia3"),), hidden_dims=(8,)))


def test_the_fingerprint_follows_the_config_file(tmp_path):
    file = write(tmp_path, {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]})
    first = fingerprint(run_config(file))["method"]
    assert first.startswith("peft v1 config ")
    assert fingerprint(run_config(file))["method"] == first
    write(tmp_path, {"peft_type": "LORA", "r": 2, "target_modules": ["v_proj"]})
    assert fingerprint(run_config(file))["method"] != first
    assert fingerprint(RunConfig(method="lora", sharing="single", hidden_dim=8))["method"] == "lora v1"
