"""T5 (google-t5/t5-base and the tiny T5): Table 2's encoder-decoder family."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Block, T5LayerNorm

from vlbench.lms.base import check_reduction
from vlbench.lms.seq2seq import EncoderDecoderFamily


class T5Family(EncoderDecoderFamily):
    """T5 (pre-LN, relative position bias, no biases): text = shared(tokens); the encoder stack applies
    dropout, the blocks (the first computes the position bias), final_layer_norm and dropout.
    Adapters wrap the attention modules and DenseReluDense, before dropout and residual."""

    name = "t5"
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

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # a tied head reads the decoder's output scaled by d_model^-0.5 (transformers 5 names the switch
        # `scale_decoder_outputs`, set from tie_word_embeddings)
        config = self.lm.config
        if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings):
            hidden = hidden * config.d_model**-0.5
        return self.lm.lm_head(hidden)

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
