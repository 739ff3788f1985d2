"""The VL model: CLIP grid features -> visual embedding (theta V->L) -> visual tokens in the LM's input.

Structure follows VL-T5/VL-Adapter (docs/paper-facts.md §1). The VL model makes the visual tokens
and holds a method's modules; everything that depends on the LM (how text is embedded, where the
visual tokens go, the loss, generation, the sublayers methods attach to) is its family's
(vlbench/lms: BART, T5, decoder-only), chosen by `lm.config.model_type`.

The model knows nothing about which parameter-efficient method is inside it; methods attach
through three seams:
  * `method_modules`: where a method registers every module it adds (so accounting can find them),
  * forward hooks on the sublayers listed by `sublayer_sites()` / `query_value_projections()`,
  * `encoder_prefix`: an optional callable returning embeddings prepended to the LM's input
    (the encoder's, or a decoder-only LM's whole sequence).
Per-task modules read `router.task`, which the engine sets before each task-homogeneous batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlbench.lms import family_of


class TaskRouter:
    """Holds the task of the current batch; per-task method modules look it up here."""

    def __init__(self) -> None:
        self.task: str | None = None

    def require(self) -> str:
        if self.task is None:
            raise RuntimeError("no current task set on the model's router")
        return self.task


class VisualEmbedding(nn.Module):
    """theta V->L: grid features and (all-zero) boxes projected to the LM width, plus image order
    and object-order identity taken from the rows of the added `<vis_extra_id_k>` tokens."""

    def __init__(self, feat_dim: int, d_model: int, word_embeddings: nn.Embedding, norm=nn.LayerNorm):
        super().__init__()
        self.feat_embedding = nn.Sequential(nn.Linear(feat_dim, d_model), norm(d_model))
        self.box_embedding = nn.Sequential(nn.Linear(5, d_model), norm(d_model))
        self.img_order_embedding = nn.Embedding(2, d_model)
        self._word_embeddings = [word_embeddings]  # a list so it is not registered twice

    def forward(self, feats: torch.Tensor, img_order: torch.Tensor, obj_order: torch.Tensor) -> torch.Tensor:
        # feats (B, N, F); img_order, obj_order (B, N). Object k uses vocab row (V - 1 - k): the
        # vis tokens are the last rows of the table, counted from the end as in VL-T5.
        word_embeddings = self._word_embeddings[0]
        boxes = feats.new_zeros(feats.shape[0], feats.shape[1], 5)
        obj_ids = word_embeddings.num_embeddings - 1 - obj_order
        return (
            self.feat_embedding(feats)
            + self.box_embedding(boxes)
            + self.img_order_embedding(img_order)
            + word_embeddings(obj_ids)
        )


@dataclass(frozen=True)
class Site:
    """One sublayer whose output a method may transform (before dropout, residual and post-LN)."""

    name: str  # e.g. "encoder.3.self_attn"
    stack: str  # "encoder" | "decoder"
    layer: int
    kind: str  # "self_attn" | "cross_attn" | "ffn"
    module: nn.Module  # hook its forward output
    dim: int


class VLModel(nn.Module):
    def __init__(self, lm: nn.Module, feat_dim: int, n_vis_tokens: int, pool_size: int, vision: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        # the CLIP grid encoder, only when it trains (Table 3); batches then carry "pixels", not "feats"
        self.vision = vision
        self.family = family_of(lm)
        self.n_vis_tokens = n_vis_tokens
        self.pool_size = pool_size
        d_model = self.family.d_model
        self.visual_embedding = VisualEmbedding(feat_dim, d_model, lm.get_input_embeddings(), self.family.norm)
        self.method_modules = nn.ModuleDict()
        self.router = TaskRouter()
        self.encoder_prefix: Callable[[int], torch.Tensor] | None = None

    # ---- structure exposed to methods -------------------------------------------------
    def sublayer_sites(self) -> list[Site]:
        """Adapter sites: 2 per encoder layer (self-attention, FFN), 3 per decoder layer (+ cross-attention)."""
        d = self.family.d_model
        return [
            Site(f"{stack}.{i}.{kind}", stack, i, kind, module, d) for stack, i, kind, module in self.family.sublayers()
        ]

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """Every attention module of the LM (encoder self, decoder self, decoder cross)."""
        return [(s.name, s.module) for s in self.sublayer_sites() if s.kind != "ffn"]

    def query_value_projections(self) -> list[tuple[str, nn.Linear, nn.Linear]]:
        """(attention site name, query projection, value projection) of every attention module."""
        return [(name, *self.family.query_value_of(attn)) for name, attn in self.attention_modules()]

    def layer_norms(self) -> list[nn.Module]:
        return [m for m in self.lm.modules() if isinstance(m, self.family.norm)]

    # ---- forward ------------------------------------------------------------------------
    def visual_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_images, T, F): precomputed, or computed here from (B, n_images, 3, S, S) pixels."""
        if self.vision is None:
            return batch["feats"]
        pixels = batch["pixels"]
        feats = self.vision(pixels.flatten(0, 1))
        return feats.unflatten(0, pixels.shape[:2])

    def train(self, mode: bool = True):
        """A trained CLIP keeps its BatchNorm statistics frozen (batches here are small and task-homogeneous)."""
        super().train(mode)
        if self.vision is not None:
            for m in self.vision.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def visual_tokens(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n_images, T, F) grid features -> pooled tokens (B, n_images * P*P, F) with orders."""
        b, n_img, t, f = feats.shape
        side = int(round(t**0.5))
        grid = feats.reshape(b * n_img, side, side, f).permute(0, 3, 1, 2)
        pooled = F.adaptive_max_pool2d(grid, self.pool_size).flatten(2).transpose(1, 2)  # (B*n, P*P, F)
        per_image = pooled.shape[1]
        tokens = pooled.reshape(b, n_img * per_image, f)
        img_order = torch.arange(n_img, device=feats.device).repeat_interleave(per_image).expand(b, -1)
        obj_order = torch.arange(per_image, device=feats.device).repeat(n_img).expand(b, -1)
        return tokens, img_order, obj_order

    def frame_tokens(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, F) video frame features -> one token per frame: image order 0, object order = frame index."""
        b, t, _ = feats.shape
        if t > self.n_vis_tokens:  # frame k is <vis_extra_id_k>: beyond the added rows it would read word rows
            raise ValueError(f"{t} frames per clip but the LM has only {self.n_vis_tokens} visual token rows")
        frame_order = torch.arange(t, device=feats.device).expand(b, -1)
        return feats, torch.zeros_like(frame_order), frame_order

    def visual_inputs(self, feats: torch.Tensor, frame_mask: torch.Tensor | None, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The visual tokens theta V->L makes of `feats` and their attention mask, in `dtype`.

        Images: `feats` (B, n_images, T, F) grids, pooled by `visual_tokens`. Video: `feats` (B, T, F)
        frames, one token each, and `frame_mask` (B, T), 0 on the padding of clips shorter than T."""
        if frame_mask is None:
            vis_feats, img_order, obj_order = self.visual_tokens(feats)
            vis_mask = torch.ones(vis_feats.shape[:2], dtype=dtype, device=feats.device)
        else:
            vis_feats, img_order, obj_order = self.frame_tokens(feats)
            vis_mask = frame_mask.to(dtype)
        return self.visual_embedding(vis_feats, img_order, obj_order), vis_mask

    def encode(self, input_ids, attention_mask, feats, frame_mask=None):
        """Encoder-decoder LMs: the encoder pass over [method prefix; embedded text; visual tokens]."""
        return self.family.encode(self, input_ids, attention_mask, feats, frame_mask)

    def encode_batch(self, batch: dict[str, torch.Tensor]):
        """`encode` on a batch; video batches carry a "frame_mask"."""
        feats = self.visual_features(batch)
        return self.encode(batch["input_ids"], batch["attention_mask"], feats, batch.get("frame_mask"))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token CE averaged per example, weighted per example (VQA soft score), averaged over the batch."""
        return self(batch).mean()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) per-example losses: token CE averaged over each example's target, times its weight.

        `loss` is their mean; distributed training sums each rank's shard instead (engine.train)."""
        return self.family.losses(self, batch)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], num_beams: int, max_new_tokens: int) -> torch.Tensor:
        """Greedy (num_beams=1) or beam search: (B, L) token ids."""
        return self.family.generate(self, batch, num_beams, max_new_tokens)

    @torch.no_grad()
    def choice_logits(self, batch: dict[str, torch.Tensor], choice_ids: list[int]) -> torch.Tensor:
        """One step: the logits of each choice's first token (NLVR2 true/false)."""
        return self.family.choice_logits(self, batch, choice_ids)


