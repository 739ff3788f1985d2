"""Expanding sweep flags and profile defaults into RunConfigs, rejecting bad combinations up front."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlbench.config import IMAGE_TEXT_TASKS, VIDEO_TEXT_TASKS, DataConfig, RunConfig, UserError
from vlbench.engine import PRECISIONS
from vlbench.methods import get_method
from vlbench.paper import TABLE1, TABLE2, TABLE3, TABLE4, TABLE5
from vlbench.profiles import PROFILES, Profile, get_profile

SUITES = {"image-text": IMAGE_TEXT_TASKS, "video-text": VIDEO_TEXT_TASKS}
DATA_ROOT_ENV = "VLBENCH_DATA_ROOT"  # the real data root when --data-root is not given
DEFAULT_METHODS = ("full", "adapter")
SEED_RANGE = (0, 2**31 - 1)  # a seed fits a PostgreSQL INTEGER column (and SQLite's), and numpy's seeding
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a plain name: one folder under runs/ ('.', '..' excluded)
SWEEP_NAME_MAX = 100


@dataclass(frozen=True)
class Preset:
    """A named grid: (method, sharing, method options) rows; hidden dims from --hidden-dims, else the
    preset's for the profile, else the profile's defaults."""

    rows: tuple[tuple[str, str | None, tuple], ...]
    lm: str | None = None  # the language model the table is about (Table 2: T5)
    tasks: tuple[str, ...] | None = None  # a subset of the suite's tasks (Table 3: VQA)
    hidden_dims: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # profile -> dims


def paper_rows(table) -> tuple:
    return tuple((row.method, row.sharing, row.options) for row in table)


PRESETS = {
    "table1": Preset(paper_rows(TABLE1)),
    # the paper's CLIP-T5 Single Adapter is a quarter of the LM width (192 of 768, §5.1): so is the tiny's
    "table2": Preset(paper_rows(TABLE2), lm="t5", hidden_dims={"tiny": (16,), "paper": (192,)}),
    "table3": Preset(paper_rows(TABLE3), tasks=("vqa",)),
    "table4": Preset(paper_rows(TABLE4)),
    "table5": Preset(paper_rows(TABLE5)),
    # beyond the paper: its best rows beside the methods that came after it, for params, score and memory
    "beyond": Preset(
        (("full", None, ()), ("adapter", "single", ()), ("lora", "single", ()), ("lst", "single", ()),
         ("bitfit", None, ()), ("peft", "single", (("config", "ia3"),)))
    ),  # fmt: skip
    # Figure 4: accuracy vs updated params of the adapter-like families over their hidden sizes
    "figure4": Preset(
        tuple((m, s, ()) for m in ("adapter", "compacter", "lora") for s in ("multiple", "single")),
        hidden_dims={"tiny": (4, 8, 16, 32), "paper": (24, 48, 96, 192)},
    ),
}


@dataclass(frozen=True)
class GridRequest:
    """What the user asked for; None means "the profile's / method's default"."""

    suite: str = "image-text"
    profile: str = "tiny"
    lm: str | None = None  # the language model: "bart" (default) | "t5" (the profile maps it to a backbone)
    methods: tuple[str, ...] | None = None  # None: full fine-tuning and Single Adapter
    sharing: tuple[str, ...] | None = None
    hidden_dims: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    lr: float | None = None
    precision: str | None = None  # fp32 | bf16; None: the profile's (paper on CUDA: bf16)
    batch_size: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    preset: str | None = None  # a named grid (PRESETS) instead of methods x sharing
    tasks: tuple[str, ...] | None = None  # None: every task of the suite
    backbone: str | None = None  # backbone size, a profile name (tiny | paper); None: the profile's own
    data_root: str | None = None  # real data: the data root; None: $VLBENCH_DATA_ROOT
    features: str | None = None  # real data: the feature store; None: <data root>/features/<CLIP model>
    images: str | None = None  # real data, a model training CLIP: the image folder
    clip_weights: str | None = None  # real data, the paper CLIP training: its weights (file or open_clip tag)
    options: tuple[tuple[str, Any], ...] = ()  # method knobs (--option key=value), applied to every method that has them


def expand(req: GridRequest) -> list[RunConfig]:
    if req.preset is not None:
        return expand_preset(req)
    if req.suite not in SUITES:
        raise UserError(f"suite: unknown suite '{req.suite}' (choose from {', '.join(SUITES)})")
    profile = get_profile(req.profile)
    sized = backbone_profile(req)  # whose backbones, pool size, width and default hidden dims the runs use
    backbone = sized.backbone(req.suite, req.lm or "bart")
    tasks = req.tasks or SUITES[req.suite]
    unknown = [t for t in tasks if t not in SUITES[req.suite]]
    if unknown:
        raise UserError(f"--tasks: '{unknown[0]}' is not a {req.suite} task ({', '.join(SUITES[req.suite])})")
    positive("--epochs", req.epochs)
    positive("--lr", req.lr)
    positive("--batch-size", req.batch_size)
    positive("--n-train", req.n_train)
    positive("--n-val", req.n_val)
    positive("--n-test", req.n_test)
    check_seeds(req.seeds)
    methods = DEFAULT_METHODS if req.methods is None else req.methods
    if not methods:
        raise UserError("--methods: give at least one method")
    for hidden_dim in req.hidden_dims or ():
        if hidden_dim <= 0:
            raise UserError(f"--hidden-dims: must be positive, got {hidden_dim}")

    for key, _ in req.options:
        if not any(key in get_method(m).option_names() for m in methods):
            raise UserError(f"--option: no requested method has an option '{key}'")
    data = data_config(req, profile, backbone)
    if req.precision not in (None, *PRECISIONS):
        raise UserError(f"--precision: unknown precision '{req.precision}' (choose from {', '.join(PRECISIONS)})")
    precision = req.precision or (profile.cuda_precision if torch.cuda.is_available() else "fp32")
    configs: dict[str, RunConfig] = {}
    for name in methods:
        method = get_method(name)
        # each method gets the options it knows; an option no requested method knows is an error
        options = {**sized.method_options.get(name, {}), **{k: v for k, v in req.options if k in method.option_names()}}
        parsed = method.parse_options(options)  # each value checked against the method's Options
        if getattr(parsed, "train_vision", False):
            check_vision_training(req, data, backbone)
        else:
            options.pop("vision_lr", None)  # a knob of the CLIP being trained: without one it must not split jobs
        # a method without sharing modes or hidden dim collapses those axes to one job
        sharings = (req.sharing or (method.default_sharing,)) if method.sharing_modes else (None,)
        dims = method.hidden_dims(req.hidden_dims, sized.default_hidden_dim(name), parsed)
        for sharing in sharings:
            for hidden_dim in dims:
                method.validate(sharing, hidden_dim, sized.d_model, parsed)
                lr = req.lr or profile.learning_rate(name, sharing, req.suite)
                optim = replace_set(
                    profile.optim, epochs=req.epochs, lr=lr, batch_size=req.batch_size, precision=precision
                )
                if req.batch_size is not None:  # --batch-size is one size for every task
                    optim = dataclasses.replace(optim, task_batch_sizes=())
                for seed in req.seeds:
                    cfg = RunConfig(
                        suite=req.suite,
                        profile=profile.name,
                        backbone=backbone,
                        pool_size=sized.pool_size,
                        tasks=tasks,
                        method=name,
                        sharing=sharing,
                        hidden_dim=hidden_dim,
                        # as given or set by the profile: the method's own defaults stay out of the key
                        method_options=tuple(sorted(options.items())),
                        seed=seed,
                        data=data,
                        optim=optim,
                    )
                    configs.setdefault(cfg.key(), cfg)
    return list(configs.values())


def expand_preset(req: GridRequest) -> list[RunConfig]:
    if req.preset not in PRESETS:
        raise UserError(f"--preset: unknown preset '{req.preset}' (choose from {', '.join(PRESETS)})")
    if req.methods is not None or req.sharing is not None:
        raise UserError("--preset: a preset sets the methods and sharing itself; drop --methods/--sharing")
    preset = PRESETS[req.preset]
    if preset.lm and req.lm and req.lm != preset.lm:
        raise UserError(f"--lm: preset {req.preset} is about --lm {preset.lm}, got --lm {req.lm}")
    if preset.tasks and not set(preset.tasks) <= set(SUITES.get(req.suite, ())):
        raise UserError(f"--preset: {req.preset} is a preset of another suite than {req.suite}")
    for key, _ in req.options:
        if not any(key in get_method(method).option_names() for method, _, _ in preset.rows):
            raise UserError(f"--option: no method of preset {req.preset} has an option '{key}'")
    configs: dict[str, RunConfig] = {}
    for method, sharing, options in preset.rows:
        known = {k: v for k, v in req.options if k in get_method(method).option_names()}
        row = dataclasses.replace(
            req,
            preset=None,
            methods=(method,),
            sharing=(sharing,) if sharing else None,
            lm=req.lm or preset.lm,
            tasks=req.tasks or preset.tasks,
            hidden_dims=req.hidden_dims or preset.hidden_dims.get(req.backbone or req.profile),
            options=tuple(sorted({**known, **dict(options)}.items())),
        )
        configs.update((cfg.key(), cfg) for cfg in expand(row))
    return list(configs.values())


def backbone_profile(req: GridRequest) -> Profile:
    """The profile whose backbones the runs use: --backbone pairs one profile's data and training
    with the other's backbones (e.g. the paper's real data on the tiny backbones, to test the path)."""
    if req.backbone is None:
        return get_profile(req.profile)
    if req.backbone not in PROFILES:
        raise UserError(f"--backbone: unknown backbone size '{req.backbone}' (choose from {', '.join(PROFILES)})")
    return PROFILES[req.backbone]


def data_config(req: GridRequest, profile: Profile, backbone: str) -> DataConfig:
    """The profile's data with the requested caps; real data also gets its root and feature store."""
    data = replace_set(profile.data, n_train=req.n_train, n_val=req.n_val, n_test=req.n_test)
    if data.source != "real":
        if any(v is not None for v in (req.data_root, req.features, req.images, req.clip_weights)):
            raise UserError(
                f"--data-root/--features/--images/--clip-weights: real data needs --profile paper; {profile.name} is synthetic"
            )
        return data
    images = str(Path(req.images).resolve()) if req.images is not None else None
    # a weights file by its absolute path; an open_clip tag ("openai") as given
    weights = req.clip_weights
    if weights is not None and Path(weights).exists():
        weights = str(Path(weights).resolve())
    data = dataclasses.replace(data, images=images, clip_weights=weights)
    root = req.data_root or os.environ.get(DATA_ROOT_ENV) or None
    if root is None:  # enough for --dry-run; a sweep stops before training, naming --data-root
        return data
    if req.suite == "video-text":  # VALUE's frame features come with the data, under the data root
        if req.features is not None:
            raise UserError("--features: video-text reads its frame features from the data root (video/vis_features)")
        return dataclasses.replace(data, root=str(Path(root).resolve()))
    features = req.features or default_features(root, backbone)
    # absolute, so a config (and its key) names the same files from any working directory
    return dataclasses.replace(data, root=str(Path(root).resolve()), features=str(Path(features).resolve()))


def check_vision_training(req: GridRequest, data: DataConfig, backbone: str) -> None:
    """A model that trains CLIP (Table 3) reads images: rendered (synthetic) or files (--images)."""
    from vlbench.backbones import BACKBONES

    if req.suite != "image-text":
        raise UserError("--option train_vision: video-text reads precomputed frame features; CLIP trains on image-text only")
    if data.source != "real":
        return
    if data.images is None:
        raise UserError(
            "--option train_vision: training CLIP on real data reads the images themselves: give --images DIR "
            "(the folder `vlbench features extract --images` reads)"
        )
    if "name" in BACKBONES[backbone].clip and data.clip_weights is None:
        raise UserError(
            f"--option train_vision: {BACKBONES[backbone].clip['name']} trains from its pretrained weights: give "
            "--clip-weights FILE (or an open_clip tag such as openai)"
        )


def default_features(root: str, backbone: str) -> Path:
    """Where the feature store of `backbone`'s CLIP lives by default: <root>/features/<CLIP model>."""
    from vlbench.backbones import BACKBONES  # open_clip: imported only when needed

    return Path(root) / "features" / BACKBONES[backbone].clip.get("name", "tiny")


def positive(flag: str, value) -> None:
    if value is None:
        return
    if isinstance(value, float):  # nan and inf pass `value <= 0`
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag}: must be a finite positive number, got {value}")
    elif value <= 0:
        raise UserError(f"{flag}: must be positive, got {value}")


def check_seeds(seeds: tuple[int, ...]) -> None:
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    low, high = SEED_RANGE
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"--seeds: expected integers, got {seed!r}")
        if not low <= seed <= high:
            raise UserError(f"--seeds: {seed} is out of range ({low} to {high})")


def check_sweep_name(name: str) -> str:
    """`name` if it is a plain name (letters, digits, '.', '_', '-', from a letter or digit, at most 100
    characters): a sweep's files go to runs/<name>/, so it must name one folder there and nothing else."""
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name):
        shown = repr(name) if len(str(name)) <= SWEEP_NAME_MAX else repr(str(name)[:SWEEP_NAME_MAX]) + "..."
        raise UserError(
            f"--sweep: {shown} is not a plain name (letters, digits, '.', '_', '-'); it names a folder under runs/"
        )
    if len(name) > SWEEP_NAME_MAX:
        raise UserError(f"--sweep: a sweep name has at most {SWEEP_NAME_MAX} characters, got {len(name)}")
    return name


def replace_set(obj, **changes):
    """dataclasses.replace with only the values that were given."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})
