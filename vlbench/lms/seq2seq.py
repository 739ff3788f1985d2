"""What the encoder-decoder families (BART, T5) share: the VL-T5 input and its three forward paths.

Encoder input: [method prefix][embedded text][visual tokens], the visual tokens after the text
embedding (BART: after `layernorm_embedding`) with no position embedding, as in VL-T5. The decoder
is the LM's own, fed the shifted target (training), decoded by vlbench.decoding (generation), or run
one step (NLVR2's choice).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from vlbench import decoding
from vlbench.lms.base import LMFamily, pad_ids, per_example_loss


class EncoderDecoderFamily(LMFamily):
    stacks = ("encoder", "decoder")

    def encoder_stack(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, model, input_ids, attention_mask, feats, frame_mask=None):
        """Encoder pass over [prefix; text; visual]: (BaseModelOutput, its attention mask)."""
        text = self.embed_text(input_ids)
        vis, vis_mask = model.visual_inputs(feats, frame_mask, attention_mask.dtype)
        parts, masks = [text, vis], [attention_mask, vis_mask]
        if model.encoder_prefix is not None:
            prefix = model.encoder_prefix(input_ids.shape[0])
            parts.insert(0, prefix)
            masks.insert(0, attention_mask.new_ones(prefix.shape[:2]))
        mask = torch.cat(masks, 1)
        hidden = self.encoder_stack(torch.cat(parts, 1), mask)
        return BaseModelOutput(last_hidden_state=hidden), mask

    def losses(self, model, batch):
        enc, mask = model.encode_batch(batch)
        labels = batch["labels"]
        config = self.lm.config
        decoder_input_ids = shift_right(labels, config.pad_token_id, config.decoder_start_token_id)
        # no KV cache: one pass over the whole target (and layers a method adds need no cache slots)
        hidden = self.lm.get_decoder()(
            input_ids=decoder_input_ids, encoder_hidden_states=enc.last_hidden_state, encoder_attention_mask=mask,
            use_cache=False,
        ).last_hidden_state  # fmt: skip
        return per_example_loss(hidden, labels, batch["weights"], self.output_logits)

    def generate(self, model, batch, num_beams, max_new_tokens):
        enc, mask = model.encode_batch(batch)
        return decoding.generate(self.lm, enc.last_hidden_state, mask, num_beams, max_new_tokens)

    def choice_logits(self, model, batch, choice_ids):
        """Targets read `<s> answer </s>` where the LM has a `<s>` (BART, our tiny T5) and `answer </s>`
        where it has none (t5-base), so the decoder input is [decoder start] + [<s>] if there is one
        (BART starts from `</s>`, T5 from `<pad>`)."""
        enc, mask = model.encode_batch(batch)
        cfg = self.lm.config
        n = batch["input_ids"].shape[0]
        bos = getattr(cfg, "bos_token_id", None)
        start_ids = [cfg.decoder_start_token_id] + ([bos] if bos is not None else [])
        start = torch.tensor(start_ids, device=mask.device).expand(n, -1)
        logits = self.lm(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=start, use_cache=False).logits[:, -1]
        return logits[:, choice_ids]

    def pretraining_batch(self, sentences, tokenizer, mask_ratio, rng):
        """BART's text infilling (T5 learns the same here): reconstruct each sentence from its spans masked."""
        pad = tokenizer.pad_token_id
        inputs = pad_ids([infill(s, tokenizer.mask_token_id, mask_ratio, rng) for s in sentences], pad)
        # the model shifts the labels right into its decoder inputs
        return {"input_ids": inputs, "attention_mask": inputs.ne(pad), "labels": pad_ids(sentences, -100)}


def shift_right(labels: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)


def infill(ids: list[int], mask_id: int, ratio: float, rng: np.random.Generator) -> list[int]:
    """BART text infilling: spans (Poisson(3) lengths) covering ~ratio of the words become one <mask> each."""
    body = ids[1:-1]  # keep <s> and </s>
    budget = round(ratio * len(body))
    hidden = np.zeros(len(body), dtype=bool)
    while hidden.sum() < budget:
        length = min(max(1, rng.poisson(3)), budget - int(hidden.sum()))
        start = rng.integers(0, len(body) - length + 1)
        hidden[start : start + length] = True
    out = [ids[0]]
    for tok, h in zip(body, hidden):
        if not h:
            out.append(tok)
        elif out[-1] != mask_id:  # a run of hidden tokens collapses into a single <mask>
            out.append(mask_id)
    out.append(ids[-1])
    return out
