"""BART (facebook/bart-base and the tiny BART): the encoder-decoder family VL-Adapter's Table 1 uses."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bart.modeling_bart import BartDecoderLayer, BartEncoderLayer

from vlbench.lms.base import check_reduction
from vlbench.lms.seq2seq import EncoderDecoderFamily


class BartFamily(EncoderDecoderFamily):
    """BART (post-LN): text = LN_emb(tokens + learned positions); adapters wrap attention and fc2."""

    name = "bart"
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

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.lm_head(hidden) + self.lm.final_logits_bias

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
