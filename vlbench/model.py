"""The VL model: precomputed CLIP grid features -> visual embedding -> appended to the text -> seq2seq LM.

Structure follows VL-T5/VL-Adapter (docs/paper-facts.md §1). The LM is BART or T5; what differs
between them (text embedding, encoder stack, sublayers, LayerNorm type) lives in a small layout
class, `BartLayout` or `T5Layout`, chosen by `lm.config.model_type`.

The model knows nothing about which parameter-efficient method is inside it; methods attach
through three seams:
  * `method_modules`: where a method registers every module it adds (so accounting can find them),
  * forward hooks on the sublayers listed by `sublayer_sites()` / `query_value_projections()`,
  * `encoder_prefix`: an optional callable returning embeddings prepended to the encoder input.
Per-task modules read `router.task`, which the engine sets before each task-homogeneous batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.bart.modeling_bart import BartDecoderLayer, BartEncoderLayer
from transformers.models.t5.modeling_t5 import T5Block, T5LayerNorm

from vlbench import decoding


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


@dataclass
class BartLayout:
    """BART (post-LN): text = LN_emb(tokens + learned positions); adapters wrap attention and fc2."""

    lm: nn.Module
    norm = nn.LayerNorm
    query_value = ("q_proj", "v_proj")
    # each projection's (output axis, input axis): "model" the residual width, "head" the attention
    # heads' concatenated dims, "ffn" the feed-forward inner units (structural pruning reads these)
    projection_axes = {
        "q_proj": ("head", "model"), "k_proj": ("head", "model"), "v_proj": ("head", "model"),
        "out_proj": ("model", "head"), "fc1": ("ffn", "model"), "fc2": ("model", "ffn"),
    }  # fmt: skip

    def layers(self, stack: str) -> nn.ModuleList:
        return self.lm.model.encoder.layers if stack == "encoder" else self.lm.model.decoder.layers

    def scaled_config(self, width: int):
        """The LM's config at another residual width, heads kept (each narrower), FFN scaled alike."""
        config = copy.deepcopy(self.lm.config)
        factor = check_reduction(config.d_model, width, config.encoder_attention_heads)
        config.d_model = width
        config.encoder_ffn_dim //= factor
        config.decoder_ffn_dim //= factor
        return config

    def new_layers(self, config, stack: str, first_index: int) -> nn.ModuleList:
        """Fresh layers of this family for `config`, numbered from `first_index` in a shared KV cache."""
        layer = BartEncoderLayer if stack == "encoder" else BartDecoderLayer
        count = config.encoder_layers if stack == "encoder" else config.decoder_layers
        return nn.ModuleList(layer(config, layer_idx=first_index + i) for i in range(count))

    def final_norm(self, width: int) -> nn.Module:
        return nn.Identity()  # post-LN: a layer's output is already normalised

    @staticmethod
    def call_like(layer, hidden, args, kwargs, memory, carry):
        """Call `layer` as its backbone twin was called (`args`, `kwargs`), on `hidden` and, in the
        decoder, cross-attending to `memory`; returns its output and what the next layer of the side
        stack needs from it (`carry`, here nothing: BART layers take only masks)."""
        args = (hidden, *args[1:2], *((memory,) if len(args) > 2 else ()), *args[3:])
        return layer(*args, **kwargs), carry

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        encoder = self.lm.model.encoder
        return encoder.layernorm_embedding(encoder.embed_tokens(input_ids) + encoder.embed_positions(input_ids))

    def encoder_stack(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoder = self.lm.model.encoder
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.lm.training)
        mask4d = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in encoder.layers:
            hidden = layer(hidden, mask4d)
        return hidden

    def sublayers(self):
        """(stack, layer, kind, module) in the order encoder then decoder, as `Site` lists them."""
        for i, layer in enumerate(self.lm.model.encoder.layers):
            yield "encoder", i, "self_attn", layer.self_attn
            yield "encoder", i, "ffn", layer.fc2
        for i, layer in enumerate(self.lm.model.decoder.layers):
            yield "decoder", i, "self_attn", layer.self_attn
            yield "decoder", i, "cross_attn", layer.encoder_attn
            yield "decoder", i, "ffn", layer.fc2


@dataclass
class T5Layout:
    """T5 (pre-LN, relative position bias, no biases): text = shared(tokens); the encoder stack applies
    dropout, the blocks (the first computes the position bias), final_layer_norm and dropout.
    Adapters wrap the attention modules and DenseReluDense, before dropout and residual."""

    lm: nn.Module
    norm = T5LayerNorm
    query_value = ("q", "v")
    projection_axes = {
        "q": ("head", "model"), "k": ("head", "model"), "v": ("head", "model"), "o": ("model", "head"),
        "wi": ("ffn", "model"), "wi_0": ("ffn", "model"), "wi_1": ("ffn", "model"), "wo": ("model", "ffn"),
    }  # fmt: skip

    def layers(self, stack: str) -> nn.ModuleList:
        return self.lm.encoder.block if stack == "encoder" else self.lm.decoder.block

    def scaled_config(self, width: int):
        config = copy.deepcopy(self.lm.config)
        factor = check_reduction(config.d_model, width, config.num_heads)
        if config.d_kv % factor or config.d_ff % factor:
            raise ValueError(f"d_kv {config.d_kv} and d_ff {config.d_ff} must be multiples of {factor}")
        config.d_model = width
        config.d_kv //= factor
        config.d_ff //= factor
        return config

    def new_layers(self, config, stack: str, first_index: int) -> nn.ModuleList:
        config = copy.deepcopy(config)
        config.is_decoder = stack == "decoder"
        count = config.num_layers if stack == "encoder" else config.num_decoder_layers
        return nn.ModuleList(
            T5Block(config, has_relative_attention_bias=i == 0, layer_idx=first_index + i) for i in range(count)
        )

    def final_norm(self, width: int) -> nn.Module:
        return T5LayerNorm(width, eps=self.lm.config.layer_norm_epsilon)

    @staticmethod
    def call_like(layer, hidden, args, kwargs, memory, carry):
        """T5Stack's call (hidden, mask, position bias, encoder states, encoder mask, cross-attention
        bias), with the position biases the previous layer of the same stack computed (`carry`)."""
        mask, _, encoder_states, encoder_mask = args[1:5]
        hidden, bias, cross_bias = layer(
            hidden, mask, carry[0], memory if encoder_states is not None else None, encoder_mask, carry[1], **kwargs
        )
        return hidden, (bias, cross_bias)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.shared(input_ids)

    def encoder_stack(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lm.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state

    def sublayers(self):
        for i, block in enumerate(self.lm.encoder.block):
            yield "encoder", i, "self_attn", block.layer[0].SelfAttention
            yield "encoder", i, "ffn", block.layer[1].DenseReluDense
        for i, block in enumerate(self.lm.decoder.block):
            yield "decoder", i, "self_attn", block.layer[0].SelfAttention
            yield "decoder", i, "cross_attn", block.layer[1].EncDecAttention
            yield "decoder", i, "ffn", block.layer[2].DenseReluDense


LAYOUTS = {"bart": BartLayout, "t5": T5Layout}


def check_reduction(d_model: int, width: int, heads: int) -> int:
    """The integer factor `d_model / width`, each of `heads` heads keeping whole dims."""
    if width <= 0 or d_model % width or width % heads:
        raise ValueError(f"a width of {width} does not divide d_model {d_model} into {heads} whole heads")
    return d_model // width


class VLModel(nn.Module):
    def __init__(self, lm: nn.Module, feat_dim: int, n_vis_tokens: int, pool_size: int, vision: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        # the CLIP grid encoder, only when it trains (Table 3); batches then carry "pixels", not "feats"
        self.vision = vision
        self.layout = LAYOUTS[lm.config.model_type](lm)
        self.n_vis_tokens = n_vis_tokens
        self.pool_size = pool_size
        d_model = lm.config.d_model
        self.visual_embedding = VisualEmbedding(feat_dim, d_model, lm.get_input_embeddings(), self.layout.norm)
        self.method_modules = nn.ModuleDict()
        self.router = TaskRouter()
        self.encoder_prefix: Callable[[int], torch.Tensor] | None = None

    # ---- structure exposed to methods -------------------------------------------------
    def sublayer_sites(self) -> list[Site]:
        """Adapter sites: 2 per encoder layer (self-attention, FFN), 3 per decoder layer (+ cross-attention)."""
        d = self.lm.config.d_model
        return [
            Site(f"{stack}.{i}.{kind}", stack, i, kind, module, d) for stack, i, kind, module in self.layout.sublayers()
        ]

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """Every attention module of the LM (encoder self, decoder self, decoder cross)."""
        return [(s.name, s.module) for s in self.sublayer_sites() if s.kind != "ffn"]

    def query_value_projections(self) -> list[tuple[str, nn.Linear, nn.Linear]]:
        """(attention site name, query projection, value projection) of every attention module."""
        q, v = self.layout.query_value
        return [(name, getattr(attn, q), getattr(attn, v)) for name, attn in self.attention_modules()]

    def layer_norms(self) -> list[nn.Module]:
        return [m for m in self.lm.modules() if isinstance(m, self.layout.norm)]

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

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
    ):
        """Encoder pass: [prefix; embedded text; visual] -> the LM's encoder stack.

        Images: `feats` (B, n_images, T, F) grids, pooled by `visual_tokens`. Video: `feats` (B, T, F)
        frames, one token each, and `frame_mask` (B, T), 0 on the padding of clips shorter than T.
        Visual tokens are added after the text embedding (BART: after `layernorm_embedding`) and get
        no position embedding, as in VL-T5; a method's prefix (prompt tokens) goes in front of the text.
        """
        text = self.layout.embed_text(input_ids)
        if frame_mask is None:
            vis_feats, img_order, obj_order = self.visual_tokens(feats)
            vis_mask = attention_mask.new_ones(vis_feats.shape[:2])
        else:
            vis_feats, img_order, obj_order = self.frame_tokens(feats)
            vis_mask = frame_mask.to(attention_mask.dtype)
        vis = self.visual_embedding(vis_feats, img_order, obj_order)
        parts = [text, vis]
        masks = [attention_mask, vis_mask]
        if self.encoder_prefix is not None:
            prefix = self.encoder_prefix(input_ids.shape[0])
            parts.insert(0, prefix)
            masks.insert(0, attention_mask.new_ones(prefix.shape[:2]))
        mask = torch.cat(masks, 1)
        hidden = self.layout.encoder_stack(torch.cat(parts, 1), mask)
        return BaseModelOutput(last_hidden_state=hidden), mask

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
        enc, mask = self.encode_batch(batch)
        labels = batch["labels"]
        decoder_input_ids = shift_right(labels, self.lm.config.pad_token_id, self.lm.config.decoder_start_token_id)
        # no KV cache: one pass over the whole target (and layers a method adds need no cache slots)
        logits = self.lm(
            encoder_outputs=enc, attention_mask=mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        valid = (labels != -100).float()
        per_example = (token_loss * valid).sum(1) / valid.sum(1).clamp(min=1)
        return per_example * batch["weights"]

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], num_beams: int, max_new_tokens: int) -> torch.Tensor:
        """Greedy (num_beams=1) or beam search; the tokens transformers' `generate` gives (decoding.py)."""
        enc, mask = self.encode_batch(batch)
        return decoding.generate(self.lm, enc.last_hidden_state, mask, num_beams, max_new_tokens)

    @torch.no_grad()
    def choice_logits(self, batch: dict[str, torch.Tensor], choice_ids: list[int]) -> torch.Tensor:
        """One decoder step: the logits of each choice's first token (NLVR2 true/false).

        Targets read `<s> answer </s>` where the LM has a `<s>` (BART, our tiny T5) and `answer </s>`
        where it has none (t5-base), so the decoder input is [decoder start] + [<s>] if there is one
        (BART starts from `</s>`, T5 from `<pad>`)."""
        enc, mask = self.encode_batch(batch)
        cfg = self.lm.config
        n = batch["input_ids"].shape[0]
        bos = getattr(cfg, "bos_token_id", None)
        start_ids = [cfg.decoder_start_token_id] + ([bos] if bos is not None else [])
        start = torch.tensor(start_ids, device=mask.device).expand(n, -1)
        logits = self.lm(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=start, use_cache=False).logits[:, -1]
        return logits[:, choice_ids]


def shift_right(labels: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)
