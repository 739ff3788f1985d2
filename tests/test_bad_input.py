"""Bad values on the sweep/params command line: one line naming the flag, exit 2, nothing run.

Each case goes through the real CLI (`--dry-run` trains nothing) and through `grid.expand` directly.
"""

import math

import pytest
from typer.testing import CliRunner

from vlbench.cli import app, parse_options
from vlbench.config import RunConfig, UserError
from vlbench.grid import GridRequest, check_sweep_name, expand
from vlbench.methods import METHODS, Compacter, LoRA

runner = CliRunner()


def cli_error(*args: str) -> str:
    """The one error line of a command that must fail as a user error."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0].removeprefix("error: ")


def sweep_error(*args: str) -> str:
    return cli_error("sweep", "image-text", "--dry-run", *args)


# (method, --option values, the exact message); the grid gets the values as the CLI decodes them (JSON)
OPTION_CASES = [
    # not a number where one is needed
    ("lora", ["lora_alpha=x"], "--option lora_alpha: expected a number, got 'x'"),
    ("lora", ["lora_alpha=true"], "--option lora_alpha: expected a number, got true"),
    ("compacter", ["phm_k=abc"], "--option phm_k: expected an integer, got 'abc'"),
    ("compacter", ["phm_k=2.5"], "--option phm_k: expected an integer, got 2.5"),
    ("compacter", ["low_rank=true"], "--option low_rank: expected an integer, got true"),
    ("prompt", ["prompt_mid_dim=[8]"], "--option prompt_mid_dim: expected an integer, got [8]"),
    # dropout out of range
    ("lora", ["lora_dropout=1.5"], "--option lora_dropout: must be in [0, 1), got 1.5"),
    ("lora", ["lora_dropout=1"], "--option lora_dropout: must be in [0, 1), got 1"),
    ("lora", ["lora_dropout=-0.1"], "--option lora_dropout: must be in [0, 1), got -0.1"),
    # zero or negative widths, ranks, factors, learning rates
    ("prompt", ["prompt_mid_dim=0"], "--option prompt_mid_dim: must be a positive integer, got 0"),
    ("hyperformer", ["task_embedding_dim=-8"], "--option task_embedding_dim: must be a positive integer, got -8"),
    ("compacter", ["phm_k=0"], "--option phm_k: must be a positive integer, got 0"),
    ("compacter", ["low_rank=-1"], "--option low_rank: must be a non-negative integer, got -1"),
    ("lora", ["lora_alpha=0"], "--option lora_alpha: must be a finite positive number, got 0"),
    ("full", ["train_vision=true", "vision_lr=-1e-6"],
     "--option vision_lr: must be a finite positive number, got -1e-06"),
    # non-finite numbers (JSON reads NaN and Infinity)
    ("lora", ["lora_alpha=NaN"], "--option lora_alpha: must be a finite positive number, got nan"),
    ("full", ["train_vision=true", "vision_lr=Infinity"],
     "--option vision_lr: must be a finite positive number, got inf"),
    ("lora", ["lora_dropout=NaN"], "--option lora_dropout: must be in [0, 1), got nan"),
    # bad booleans
    ("full", ["train_vision=maybe"], "--option train_vision: expected true or false, got 'maybe'"),
    ("compacter", ["shared_rules=1"], "--option shared_rules: expected true or false, got 1"),
    # a choice, and a key no requested method has (today's message)
    ("adapter", ["half_shared=left"], "--option half_shared: expected 'up' or 'down', got 'left'"),
    ("adapter", ["dropout=0.1"], "--option: no requested method has an option 'dropout'"),
]


def option_case(method: str, values: list[str], message: str):
    sharing = ("half",) if method == "adapter" else None
    args = ["--methods", method, *(["--sharing", "half"] if sharing else [])]
    args += [arg for value in values for arg in ("--option", value)]
    return args, dict(methods=(method,), sharing=sharing, options=parse_options(values)), message


GRID_CASES = [
    (["--lr", "nan"], dict(lr=math.nan), "--lr: must be a finite positive number, got nan"),
    (["--lr", "inf"], dict(lr=math.inf), "--lr: must be a finite positive number, got inf"),
    (["--lr", "-inf"], dict(lr=-math.inf), "--lr: must be a finite positive number, got -inf"),
    (["--lr", "0"], dict(lr=0.0), "--lr: must be a finite positive number, got 0.0"),
    (["--seeds", "99999999999"], dict(seeds=(99999999999,)), "--seeds: 99999999999 is out of range (0 to 2147483647)"),
    (["--seeds", "0,2147483648"], dict(seeds=(0, 2**31)), "--seeds: 2147483648 is out of range (0 to 2147483647)"),
    (["--seeds", "-1"], dict(seeds=(-1,)), "--seeds: -1 is out of range (0 to 2147483647)"),
    (["--methods", "adapter", "--hidden-dims", "0"], dict(methods=("adapter",), hidden_dims=(0,)),
     "--hidden-dims: must be positive, got 0"),
    (["--methods", "adapter", "--hidden-dims", "-8"], dict(methods=("adapter",), hidden_dims=(-8,)),
     "--hidden-dims: must be positive, got -8"),
    (["--epochs", "0"], dict(epochs=0), "--epochs: must be positive, got 0"),
]


@pytest.mark.parametrize("args, request_kwargs, message", [option_case(*c) for c in OPTION_CASES] + GRID_CASES)
def test_bad_sweep_values_are_one_line_naming_the_flag(args, request_kwargs, message):
    assert sweep_error(*args) == message
    with pytest.raises(UserError) as err:
        expand(GridRequest(**request_kwargs))
    assert str(err.value) == message


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "figure4", "--option", "lora_dropout=2"], "--option lora_dropout: must be in [0, 1), got 2"),
        (["--preset", "table1", "--lr", "nan"], "--lr: must be a finite positive number, got nan"),
        (["--preset", "table5", "--seeds", "-3"], "--seeds: -3 is out of range (0 to 2147483647)"),
        (["--preset", "table3", "--option", "vision_lr=abc"], "--option vision_lr: expected a number, got 'abc'"),
        (["--preset", "table1", "--option", "x=1"], "--option: no method of preset table1 has an option 'x'"),
    ],
)
def test_presets_check_the_same_values(args, message):
    assert sweep_error(*args) == message


def test_video_sweep_checks_the_same_values():
    assert cli_error("sweep", "video-text", "--dry-run", "--methods", "lora", "--option", "lora_alpha=x") == (
        "--option lora_alpha: expected a number, got 'x'"
    )
    message = "--lr: must be a finite positive number, got nan"
    assert cli_error("sweep", "video-text", "--dry-run", "--lr", "nan") == message


def test_params_command_rejects_bad_values():
    base = ("params", "image-text", "--profile", "tiny", "--methods", "adapter")
    assert cli_error(*base, "--hidden-dims", "0") == "--hidden-dims: must be positive, got 0"
    assert cli_error(*base, "--sharing", "both") == (
        "--sharing: 'both' is not available for adapter (choose from multiple, half, single)"
    )


def test_a_method_rejects_bad_options_given_directly():
    # a RunConfig made without the grid (tests, stored configs) is checked when the method is built
    with pytest.raises(UserError, match=r"^--option lora_dropout: must be in \[0, 1\), got 1.5$"):
        LoRA(RunConfig(method="lora", sharing="single", hidden_dim=4, method_options=(("lora_dropout", 1.5),)))
    with pytest.raises(UserError, match="^--option: lora has no option 'phm_k' "):
        LoRA.validate("single", 4, 64, {"phm_k": 2})


@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".", "..", "-a", ".hidden", "a b", "a\\b", "x\n", "ü"])
def test_sweep_names_must_be_plain(name):
    with pytest.raises(UserError) as err:
        check_sweep_name(name)
    assert str(err.value) == (
        f"--sweep: {name!r} is not a plain name (letters, digits, '.', '_', '-'); it names a folder under runs/"
    )


def test_sweep_name_message_and_length():
    with pytest.raises(UserError) as err:
        check_sweep_name("../../x")
    assert str(err.value) == (
        "--sweep: '../../x' is not a plain name (letters, digits, '.', '_', '-'); it names a folder under runs/"
    )
    for name in ("ok-name_1.2", "image-text-tiny", "video-text-paper", "x" * 100, "1", "a..b"):
        assert check_sweep_name(name) == name
    with pytest.raises(UserError, match="^--sweep: a sweep name has at most 100 characters, got 101$"):
        check_sweep_name("x" * 101)


def test_valid_options_still_work_and_keep_their_keys():
    result = runner.invoke(app, ["sweep", "image-text", "--dry-run", "--methods", "lora", "--option", "lora_alpha=16"])
    assert result.exit_code == 0, result.output
    assert "lora-single-d8-s0" in result.output
    (cfg,) = expand(GridRequest(methods=("lora",), options=(("lora_alpha", 16),)))
    # the pairs the user gave, as given (an int stays an int), no defaults filled in: keys of stored runs hold
    assert cfg.method_options == (("lora_alpha", 16),)
    assert cfg.key() == "97ccaabf1bd532d3"  # the key before the typed options (at the tiny test split of 1000)
    options = (("phm_k", 4), ("train_vision", True), ("vision_lr", 0.01))
    configs = expand(GridRequest(methods=("compacter", "full"), options=options))
    # (compacter's key moved with its tiny learning rate, 3e-3 -> 3e-2)
    assert {c.method: c.key() for c in configs} == {"compacter": "76c87e319d7ce5ac", "full": "fc136b3ebcd5228e"}
    # an int where a float is expected is fine; the parsed options are typed, with the defaults
    options = LoRA(cfg).options
    assert options.lora_alpha == 16.0 and isinstance(options.lora_alpha, float) and options.lora_dropout == 0.1
    assert Compacter.parse_options({}) == Compacter.Options(half_shared="up", phm_k=2, shared_rules=False, low_rank=0)


def test_every_method_declares_frozen_typed_options():
    import dataclasses

    for name, method in METHODS.items():
        options = method.parse_options({})
        assert dataclasses.is_dataclass(options), name
        for f in dataclasses.fields(options):
            assert f.metadata["kind"] in ("int", "float", "bool", "choice", "str"), (name, f.name)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(options, f.name, f.default)
        assert method.option_names() == tuple(f.name for f in dataclasses.fields(options))
