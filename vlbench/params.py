"""The one parameter-accounting function (docs/paper-facts.md §3).

Updated Params (%) = 100 * trainable / all parameters of the VL model, where "all" is the LM
(tied lm_head once), the added `<vis_extra_id_k>` rows, the visual embedding and the parameters a
method adds. The vision encoder is not part of the VLModel (its features are precomputed), so it is
not counted -- except in Table 3's runs that train it, where it is part of the model and counted as
the "vision" component. `named_parameters()` yields a shared tensor once, so shared modules count once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlbench.config import RunConfig, UserError
from vlbench.model import VLModel

CONVENTION = (
    "vl-adapter: LM + added vis-token rows + visual embedding + method params; vision encoder excluded unless it trains"
)
COMPONENTS = ("lm", "vis_tokens", "visual_embedding", "method", "vision")


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int
    components: dict[str, dict[str, int]]  # component -> {"trainable": n, "total": n}
    convention: str = CONVENTION

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def count_parameters(model: VLModel) -> ParamCount:
    components = {c: {"trainable": 0, "total": 0} for c in COMPONENTS}
    word_embeddings = model.lm.get_input_embeddings().weight

    def add(component: str, n: int, trains: bool) -> None:
        components[component]["total"] += n
        components[component]["trainable"] += n if trains else 0

    # a method's parameters by identity: a module it adds inside the LM (PEFT's tuner layers) is met
    # first under `lm.`, and named_parameters() yields a shared tensor once, under its first name
    method_params = {id(p) for p in model.method_modules.parameters()}
    for name, p in model.named_parameters():
        if p is word_embeddings:
            # the table holds the original vocabulary and, in its last rows, the added vis tokens
            vis_rows = model.n_vis_tokens * p.shape[1]
            add("vis_tokens", vis_rows, p.requires_grad)
            add("lm", p.numel() - vis_rows, p.requires_grad)
        elif name.startswith("visual_embedding."):
            add("visual_embedding", p.numel(), p.requires_grad)
        elif id(p) in method_params:
            add("method", p.numel(), p.requires_grad)
        elif name.startswith("vision."):
            add("vision", p.numel(), p.requires_grad)
        else:
            add("lm", p.numel(), p.requires_grad)
    trainable = sum(c["trainable"] for c in components.values())
    total = sum(c["total"] for c in components.values())
    return ParamCount(trainable=trainable, total=total, components=components)


def skeleton_model(cfg: RunConfig) -> VLModel:
    """The job's VL model on meta tensors: every shape, no weights, no data, no network."""
    from vlbench.backbones import (
        BACKBONES,
        GridEncoder,
        architecture,
        build_clip,
    )
    from vlbench.methods import build_vl_model, trains_vision
    from vlbench.pretrain import shared_tiny_tokenizer

    spec = BACKBONES[cfg.backbone]
    with torch.device("meta"):
        lm, feat_dim = architecture(spec)
        vision = None
        if trains_vision(cfg):  # a tiny CLIP's text tower is sized by its tokenizer
            vision = GridEncoder(build_clip(spec, None if "name" in spec.clip else shared_tiny_tokenizer(spec)).visual)
        return build_vl_model(cfg, lm, feat_dim, spec.n_vis_tokens, vision=vision)


def count_for_config(cfg: RunConfig) -> ParamCount:
    """The count of a job from the architectures alone."""
    return count_parameters(skeleton_model(cfg))


def params_rows(configs: list[RunConfig], labels: list[str] | None = None) -> list[dict]:
    """One row per job: label, trainable, total, percent (and sharing/hidden dim without labels)."""
    rows = []
    for i, cfg in enumerate(configs):
        counts = count_for_config(cfg)
        row = {"method": labels[i] if labels else cfg.method}
        if not labels:
            row.update(sharing=cfg.sharing, hidden_dim=cfg.hidden_dim)
        row.update(trainable=counts.trainable, total=counts.total, percent=round(counts.percent, 4))
        rows.append(row)
    return rows


def paper_table_params(suite: str, profile: str, lm: str = "bart") -> list[dict]:
    """The rows of the paper's parameter column for `suite` (Table 1 image-text, Table 4 video-text),
    each row's method and sharing counted under `profile` with the language model `lm`."""
    from vlbench.grid import GridRequest, expand
    from vlbench.paper import TABLES_BY_SUITE

    if suite not in TABLES_BY_SUITE:
        raise UserError(f"suite: unknown suite '{suite}' (choose from {', '.join(TABLES_BY_SUITE)})")
    preset, table = TABLES_BY_SUITE[suite]
    configs = expand(GridRequest(suite=suite, profile=profile, lm=lm, preset=preset))
    return params_rows(configs, [row.label for row in table])
