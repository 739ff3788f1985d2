"""Greedy and beam-search decoding for the VL model's encoder-decoder LM.

The outputs equal `transformers`' `generate(encoder_outputs=..., num_beams=K, early_stopping=K > 1)`
token for token (tests/test_decoding.py compares them): the same logits processors, taken from the
LM's generation config (tiny BART: forced </s> at the last step; facebook/bart-base adds forced <s>
and no_repeat_ngram_size=3), the same beam bookkeeping, length penalty and early-stopping rule,
and the same output padding. It is faster for three reasons:
  * an example leaves the batch as soon as its result is final (greedy: it emitted </s>; beams: K
    finished hypotheses, or none of its running beams can beat them), and the rest decode without it;
  * beam search computes the cross-attention keys and values once per example, not once per beam,
    keeps them once per example and never reorders them: an example's K beams attend as K queries
    of one attention call to its one copy (`grouped_attention`), so each step reads the encoder's
    keys and values once, not K times;
  * one plain loop per step, without generate's per-step bookkeeping.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import AttentionMaskInterface
from transformers.generation import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
)
from transformers.modeling_outputs import BaseModelOutput

NEG = -1.0e9  # transformers' "impossible" score in beam search

# generation-config fields that add a logits processor vlbench does not implement, with their defaults
_UNSUPPORTED = (
    "bad_words_ids", "begin_suppress_tokens", "encoder_no_repeat_ngram_size", "encoder_repetition_penalty",
    "exponential_decay_length_penalty", "guidance_scale", "min_length", "min_new_tokens", "remove_invalid_values",
    "renormalize_logits", "repetition_penalty", "sequence_bias", "suppress_tokens", "watermarking_config",
)  # fmt: skip


def logits_processors(config: GenerationConfig, max_length: int) -> LogitsProcessorList:
    """The processors `generate` would apply for `config` (greedy or beam search, no sampling)."""
    defaults = GenerationConfig()
    unsupported = [k for k in _UNSUPPORTED if getattr(config, k, None) != getattr(defaults, k, None)]
    if unsupported:
        raise ValueError(f"the LM's generation config sets {', '.join(unsupported)}, which vlbench's decoding does not implement")
    # in generate's order: n-gram blocking, then forced BOS, then forced EOS
    processors = LogitsProcessorList()
    if config.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.forced_bos_token_id is not None:
        processors.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
    if config.forced_eos_token_id is not None:
        processors.append(ForcedEOSTokenLogitsProcessor(max_length, config.forced_eos_token_id))
    return processors


def grouped_attention(module, query, key, value, attention_mask, *, inner, **kwargs):
    """The LM's own attention function (`inner`), except where a layer's cached keys and values hold
    one row per example while the queries hold K beams per example (beam search's cross-attention):
    there each example's K one-token queries attend as one row of K queries, and a mask or position
    bias given per beam is taken from the example's first beam (they are the same for all K)."""
    rows, kv_rows = query.shape[0], key.shape[0]
    if rows == kv_rows:
        return inner(module, query, key, value, attention_mask, **kwargs)
    k, (_, heads, length, dim) = rows // kv_rows, query.shape
    assert rows == k * kv_rows and length == 1, "grouped attention is for one decoding step of K beams"

    def per_example(t):
        return t[::k] if isinstance(t, torch.Tensor) and t.shape[0] == rows else t

    grouped = query.view(kv_rows, k, heads, dim).transpose(1, 2)  # (examples, heads, K, dim)
    kwargs = {name: per_example(v) for name, v in kwargs.items()}
    out, _ = inner(module, grouped, key, value, per_example(attention_mask), **dict(kwargs, is_causal=False))
    return out.reshape(rows, 1, heads, dim), None  # (examples, K, heads, dim): the inner layout, per beam


@contextmanager
def beams_share_cross_attention(lm):
    """Route the LM's attention through `grouped_attention` while it decodes with beams; yields the
    indices of the cache layers whose cross-attention keys and values may stay once per example (the
    LM decoder's own; a method's extra layers, LST's side network, keep one copy per beam)."""
    implementation = lm.config._attn_implementation
    if implementation not in AttentionInterface._global_mapping:  # eager: each model's own function
        yield set()
        return
    name = f"vlbench_grouped_{implementation}"
    if name not in AttentionInterface._global_mapping:
        inner = AttentionInterface._global_mapping[implementation]
        AttentionInterface.register(name, lambda *args, **kwargs: grouped_attention(*args, inner=inner, **kwargs))
        # the masks the LM builds for an implementation are its own, so the same as the inner one's
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[implementation])
    decoder = lm.get_decoder()
    lm_layers = {m.layer_idx for m in decoder.modules() if isinstance(getattr(m, "layer_idx", None), int)}
    # the decoder's own config (T5's decoder stack reads a copy of the model's) is the one it reads
    configs = {id(c): c for c in [lm.config] + [getattr(m, "config", None) for m in decoder.modules()] if c is not None}
    for config in configs.values():
        config._attn_implementation = name
    try:
        yield lm_layers
    finally:
        for config in configs.values():
            config._attn_implementation = implementation


class Decoder:
    """One decoding call's fixed parts: the LM, its processors, EOS ids and the length budget."""

    def __init__(self, lm, max_new_tokens: int):
        config = lm.generation_config
        self.lm = lm
        self.start = lm.config.decoder_start_token_id
        self.pad = config.pad_token_id
        eos = config.eos_token_id
        self.eos = torch.tensor(eos if isinstance(eos, list) else [eos])
        self.max_length = 1 + max_new_tokens  # the decoder prompt is the start token
        self.processors = logits_processors(config, self.max_length)
        self.length_penalty = 1.0 if config.length_penalty is None else config.length_penalty

    def new_cache(self) -> EncoderDecoderCache:
        # layers are created as they are first written, so layers a method adds (LST's side network,
        # numbered after the LM's) keep their keys and values here too and follow every reorder
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, tokens: torch.Tensor, encoded: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """fp32 next-token logits (rows, V) of one decoder step on the cached prefix."""
        out = self.lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
            attention_mask=mask,
            decoder_input_ids=tokens[:, None],
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1].float()

    def is_eos(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.isin(tokens, self.eos.to(tokens.device))

    def greedy(self, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, L = 1 + the steps until every row emitted </s> (or the budget), pad after."""
        b, device = encoded.shape[0], encoded.device
        sequences = torch.full((b, self.max_length), self.pad, dtype=torch.long, device=device)
        sequences[:, 0] = self.start
        rows = torch.arange(b, device=device)  # the batch rows still decoding
        cache = self.new_cache()
        length = 1
        while True:
            scores = self.processors(sequences[rows, :length], self.step(sequences[rows, length - 1], encoded, mask, cache))
            tokens = scores.argmax(-1)
            sequences[rows, length] = tokens
            length += 1
            running = ~self.is_eos(tokens)
            if length == self.max_length or not running.any():
                return sequences[:, :length]
            if not running.all():
                keep = running.nonzero().squeeze(1)
                rows, encoded, mask = rows[keep], encoded[keep], mask[keep]
                cache.batch_select_indices(keep)

    def beam_search(self, encoded: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        """(B, L) the best of K beams per example, with generate's early stopping (K finished) and
        length penalty; L = 1 + the longest best hypothesis, pad after (T5-base, pad id 0: </s>).

        The state covers the n examples still decoding; an example's best hypothesis is written
        to the output when it leaves."""
        with beams_share_cross_attention(self.lm) as shared:
            return self._beam_search(encoded, mask, k, shared)

    def _beam_search(self, encoded: torch.Tensor, mask: torch.Tensor, k: int, shared: set[int]) -> torch.Tensor:
        b, device = encoded.shape[0], encoded.device
        keep_k = max(2, 1 + len(self.eos)) * k  # candidates per step, enough to keep K running beams
        top_k_mask = torch.arange(keep_k, device=device) < k
        fill = self.pad if self.pad else int(self.eos[0])  # as generate fills (`pad or eos`)
        out = torch.full((b, self.max_length), fill, dtype=torch.long, device=device)
        out_lengths = torch.zeros(b, dtype=torch.long, device=device)
        running = torch.full((b, k, self.max_length), fill, dtype=torch.long, device=device)
        running[:, :, 0] = self.start
        running_scores = torch.zeros(b, k, device=device)
        running_scores[:, 1:] = NEG  # only the first beam's continuations count at the first step
        # the K best finished hypotheses per example, their scores and generated lengths
        finished = running.clone()
        finished_scores = torch.full((b, k), NEG, device=device)
        finished_lengths = torch.zeros(b, k, dtype=torch.long, device=device)
        is_finished = torch.zeros(b, k, dtype=torch.bool, device=device)
        may_improve = torch.ones(b, 1, dtype=torch.bool, device=device)
        examples = torch.arange(b, device=device)  # the examples still decoding

        # First step on one row per example: fills the cross-attention cache once per example.
        cache = self.new_cache()
        logits = self.step(running[:, 0, 0], encoded, mask, cache).repeat_interleave(k, 0)
        cache.self_attention_cache.batch_repeat_interleave(k)
        cross = cache.cross_attention_cache.layers
        for i in set(range(len(cross))) - shared:
            cross[i].batch_repeat_interleave(k)
        mask = mask.repeat_interleave(k, 0)
        encoded = encoded.repeat_interleave(k, 0)
        length = 1
        while True:
            n, vocab = examples.numel(), logits.shape[-1]
            log_probs = self.processors(running[:, :, :length].flatten(0, 1), F.log_softmax(logits, dim=-1))
            log_probs = (log_probs.view(n, k, vocab) + running_scores[:, :, None]).view(n, k * vocab)
            # the best keep_k continuations over all beams of each example
            top_scores, top_ids = torch.topk(log_probs, keep_k)
            source_beam, token = top_ids // vocab, top_ids % vocab
            candidates = torch.take_along_dim(running, source_beam[:, :, None], dim=1)
            candidates[:, :, length] = token
            ends = self.is_eos(token) | (length + 1 >= self.max_length)
            # the K best candidates that did not end keep running
            continuing = top_scores + ends.float() * NEG
            chosen = torch.topk(continuing, k)[1]
            running = torch.take_along_dim(candidates, chosen[:, :, None], dim=1)
            running_scores = torch.take_along_dim(continuing, chosen, dim=1)
            # candidates among the top K that ended join the finished ones if they beat them
            just_finished = ends & top_k_mask[None, :]
            scores = top_scores / (length**self.length_penalty)  # generated tokens: length + 1 - the prompt's 1
            scores += torch.all(is_finished, dim=-1, keepdim=True).float() * NEG  # early_stopping=True
            scores += (~may_improve).float() * NEG
            scores += (~just_finished) * NEG
            merged_scores = torch.cat((finished_scores, scores), 1)
            best = torch.topk(merged_scores, k)[1]
            finished = torch.take_along_dim(torch.cat((finished, candidates), 1), best[:, :, None], dim=1)
            finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
            merged_lengths = torch.cat((finished_lengths, torch.full_like(token, length)), 1)
            finished_lengths = torch.take_along_dim(merged_lengths, best, dim=1)
            is_finished = torch.take_along_dim(torch.cat((is_finished, just_finished), 1), best, dim=1)
            length += 1
            # generate's heuristic: stop an example when its best running beam cannot beat its worst finished one
            best_possible = running_scores[:, :1] / ((length - 1) ** self.length_penalty)
            worst = torch.where(is_finished, finished_scores.min(1, keepdim=True)[0], NEG)
            may_improve = may_improve & (best_possible > worst).any(-1, keepdim=True)
            open_ = may_improve.squeeze(1) & ~is_finished.all(-1)
            if length == self.max_length or not open_.any():
                break
            parents = torch.take_along_dim(source_beam, chosen, dim=1)  # each running beam's parent beam
            rows = torch.arange(n, device=device)[:, None] * k
            cache.self_attention_cache.reorder_cache((rows + parents)[open_].flatten())
            if not open_.all():  # the examples whose result is final leave the batch
                done = ~open_
                out[examples[done]] = finished[done, 0]
                out_lengths[examples[done]] = finished_lengths[done, 0]
                kept = (rows + torch.arange(k, device=device))[open_].flatten()
                still = open_.nonzero().squeeze(1)
                for i, layer in enumerate(cross):
                    layer.batch_select_indices(still if i in shared else kept)
                mask, encoded = mask[kept], encoded[kept]
                examples, running, running_scores = examples[open_], running[open_], running_scores[open_]
                finished, finished_scores, finished_lengths = finished[open_], finished_scores[open_], finished_lengths[open_]
                is_finished, may_improve = is_finished[open_], may_improve[open_]
            logits = self.step(running[:, :, length - 1].flatten(), encoded, mask, cache)
        out[examples] = finished[:, 0]
        out_lengths[examples] = finished_lengths[:, 0]
        return out[:, : 1 + int(out_lengths.max())]


def generate(lm, encoded: torch.Tensor, mask: torch.Tensor, num_beams: int, max_new_tokens: int) -> torch.Tensor:
    """Token ids (B, L) from the encoder output (B, T, D) and its mask (B, T); see the module docstring."""
    decoder = Decoder(lm, max_new_tokens)
    if num_beams == 1:
        return decoder.greedy(encoded, mask)
    return decoder.beam_search(encoded, mask, num_beams)
