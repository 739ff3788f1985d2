import pytest

from vlbench.config import UserError
from vlbench.grid import GridRequest, expand


def test_full_ignores_sharing_and_hidden_dims():
    configs = expand(GridRequest(methods=("full", "adapter"), sharing=("single", "multiple"), hidden_dims=(8, 16)))
    full = [c for c in configs if c.method == "full"]
    adapters = [c for c in configs if c.method == "adapter"]
    assert len(full) == 1 and full[0].sharing is None and full[0].hidden_dim is None
    assert {(c.sharing, c.hidden_dim) for c in adapters} == {("single", 8), ("single", 16), ("multiple", 8), ("multiple", 16)}


def test_defaults_and_seeds():
    configs = expand(GridRequest(methods=("adapter",), seeds=(0, 1)))
    assert [(c.sharing, c.hidden_dim, c.seed) for c in configs] == [("single", 8, 0), ("single", 8, 1)]
    assert len({c.key() for c in configs}) == 2
    assert configs[0].optim.lr == 1e-2  # tiny profile's single-adapter learning rate


def test_paper_profile_uses_paper_hyperparameters():
    configs = expand(GridRequest(profile="paper", methods=("full", "adapter"), sharing=("multiple", "single")))
    lrs = {(c.method, c.sharing): c.optim.lr for c in configs}
    assert lrs == {("full", None): 1e-4, ("adapter", "multiple"): 3e-4, ("adapter", "single"): 1e-3}
    assert all(c.optim.epochs == 20 and c.hidden_dim in (None, 96) for c in configs)


def test_overrides_reach_the_config():
    (cfg,) = expand(GridRequest(methods=("full",), epochs=2, lr=0.1, batch_size=4, n_train=10, n_val=5, n_test=6))
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.batch_size) == (2, 0.1, 4)
    assert (cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) == (10, 5, 6)


@pytest.mark.parametrize(
    "request_kwargs, flag",
    [
        (dict(methods=("nope",)), "--methods"),
        (dict(methods=("adapter",), sharing=("both",)), "--sharing"),
        (dict(methods=("adapter",), hidden_dims=(0,)), "--hidden-dims"),
        (dict(methods=("full",), hidden_dims=(-4,)), "--hidden-dims"),
        (dict(profile="huge"), "--profile"),
        (dict(epochs=0), "--epochs"),
        (dict(lr=-1.0), "--lr"),
    ],
)
def test_bad_requests_name_the_flag(request_kwargs, flag):
    with pytest.raises(UserError, match=flag):
        expand(GridRequest(**request_kwargs))


def test_options_reach_the_methods_that_have_them():
    configs = expand(GridRequest(methods=("full", "lora", "compacter"), options=(("lora_alpha", 16),)))
    by_method = {c.method: c for c in configs}
    assert by_method["lora"].options == {"lora_alpha": 16}
    assert by_method["compacter"].options == {} and by_method["full"].options == {}


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        (dict(methods=("lora",), options=(("phm_k", 4),)), "--option"),
        (dict(methods=("compacter",), hidden_dims=(9,)), "--hidden-dims: 9 is not divisible"),
        (dict(methods=("compacter",), options=(("phm_k", 0),)), "--option phm_k"),
        (dict(methods=("adapter",), sharing=("half",), options=(("half_shared", "left"),)), "--option half_shared"),
        (dict(methods=("lora",), sharing=("half",)), "--sharing: 'half' is not available for lora"),
    ],
)
def test_bad_method_combinations_are_rejected_up_front(request_kwargs, message):
    with pytest.raises(UserError, match=message):
        expand(GridRequest(**request_kwargs))


def test_table1_preset_has_every_paper_row():
    configs = expand(GridRequest(preset="table1"))
    rows = {(c.method, c.sharing) for c in configs}
    assert rows == {
        ("full", None), ("adapter", "multiple"), ("adapter", "half"), ("adapter", "single"), ("hyperformer", None),
        ("compacter", "multiple"), ("compacter", "single"), ("lora", "multiple"), ("lora", "single"),
        ("prompt", "multiple"), ("prompt", "single"),
    }
    assert len(configs) == 11
    paper = {(c.method, c.sharing): c.hidden_dim for c in expand(GridRequest(profile="paper", preset="table1"))}
    assert paper[("lora", "single")] == 128 and paper[("prompt", "multiple")] == 40 and paper[("adapter", "half")] == 96


def test_preset_rejects_methods_and_unknown_names():
    assert {c.method for c in expand(GridRequest(preset="table5"))} == {"proj-only", "proj-ln", "adapter"}
    with pytest.raises(UserError, match="--preset"):
        expand(GridRequest(preset="table9"))
    with pytest.raises(UserError, match="--preset"):
        expand(GridRequest(preset="table1", methods=("lora",)))
