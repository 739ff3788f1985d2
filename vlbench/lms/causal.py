"""Decoder-only LMs of the LLaMA lineage (LLaMA, Qwen2, Mistral, SmolLM: RMSNorm, SwiGLU MLP,
rotary positions), with CLIP features projected into the LM's input sequence as LLaVA does.

Sequence of each example: [method prefix][visual tokens][text: task prefix + question][target].
  * training: the whole sequence, right-padded, one causal pass; the loss covers the target tokens
    only (the logit before each target token predicts it), per example as for the seq2seq LMs;
  * generation: the prompt (all but the target) left-padded, so every row continues at the same
    position; transformers' generate with the LM's KV cache, positions from the attention mask;
  * NLVR2: one pass over the prompt and the target's first token (`<s>` where the tokenizer has
    one), the next token's logits of each choice.
The visual tokens take no position of their own beyond their place in the sequence (rotary
positions count every token). Adapter sites: after self-attention and after the MLP of every
block; LoRA on q_proj and v_proj; the layer norms are the model's RMSNorm (or LayerNorm) modules.
"""

from __future__ import annotations

import torch
from torch import nn

from vlbench.lms.base import LMFamily, pad_ids, per_example_loss


class CausalFamily(LMFamily):
    name = "causal"
    stacks = ("decoder",)
    query_value = ("q_proj", "v_proj")

    def __init__(self, lm: nn.Module):
        super().__init__(lm)
        self.norm = type(lm.model.norm)  # LlamaRMSNorm, Qwen2RMSNorm, ...: the family's layer norm

    def layers(self, stack: str) -> nn.ModuleList:
        return self.lm.model.layers

    def sublayers(self):
        for i, layer in enumerate(self.lm.model.layers):
            yield "decoder", i, "self_attn", layer.self_attn
            yield "decoder", i, "ffn", layer.mlp

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)

    def prompts(self, model, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each example's prompt embeddings: [prefix][visual tokens][its text, padding dropped]."""
        text_mask = batch["attention_mask"].bool()
        feats = model.visual_features(batch)
        vis, vis_mask = model.visual_inputs(feats, batch.get("frame_mask"), batch["attention_mask"].dtype)
        text = self.embed_text(batch["input_ids"])
        n = text.shape[0]
        prefix = model.encoder_prefix(n) if model.encoder_prefix is not None else None
        rows = []
        for b in range(n):
            parts = [vis[b][vis_mask[b].bool()], text[b][text_mask[b]]]
            if prefix is not None:
                parts.insert(0, prefix[b])
            rows.append(torch.cat(parts))
        return rows

    def hidden_states(self, rows: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows padded into one batch (left or right): the LM's last hidden states, the mask and
        the input embeddings."""
        embeds, mask = pad(rows, left)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        out = self.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state, mask, embeds

    def losses(self, model, batch):
        labels = batch["labels"]
        prompts = self.prompts(model, batch)
        embed = self.lm.get_input_embeddings()
        targets = [embed(row[row != -100]) for row in labels]
        hidden, _, _ = self.hidden_states([torch.cat([p, t]) for p, t in zip(prompts, targets)], left=False)
        # target token k of example b is predicted by the hidden state just before it
        length = labels.shape[1]
        starts = torch.tensor([len(p) - 1 for p in prompts], device=hidden.device)
        index = (starts[:, None] + torch.arange(length, device=hidden.device)).clamp(max=hidden.shape[1] - 1)
        picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.lm.get_output_embeddings()(picked)
        return per_example_loss(logits, labels, batch["weights"])

    def generate(self, model, batch, num_beams, max_new_tokens):
        """(B, L) the generated tokens (the prompt not repeated)."""
        embeds, mask = pad(self.prompts(model, batch), left=True)
        return self.lm.generate(
            inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams, max_new_tokens=max_new_tokens,
            do_sample=False, early_stopping=num_beams > 1,
        )  # fmt: skip

    def choice_logits(self, model, batch, choice_ids):
        rows = self.prompts(model, batch)
        bos = self.lm.config.bos_token_id
        if bos is not None:  # targets read `<s> answer </s>`: the choice is the token after <s>
            start = self.lm.get_input_embeddings()(torch.tensor([bos], device=rows[0].device))
            rows = [torch.cat([r, start]) for r in rows]
        hidden, _, _ = self.hidden_states(rows, left=True)
        return self.lm.get_output_embeddings()(hidden[:, -1])[:, choice_ids]

    def pretraining_batch(self, sentences, tokenizer, mask_ratio, rng):
        """Next-token prediction on each sentence (the model shifts the labels itself)."""
        pad = tokenizer.pad_token_id
        inputs = pad_ids(sentences, pad)
        return {"input_ids": inputs, "attention_mask": inputs.ne(pad), "labels": pad_ids(sentences, -100)}


def pad(rows: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, d) embeddings padded with zeros on the left or right, and the (B, S) attention mask."""
    length = max(len(r) for r in rows)
    embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        embeds[b, span] = row
        mask[b, span] = 1
    return embeds, mask
