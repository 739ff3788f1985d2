"""Decoder-only LMs: the LLaMA lineage (LLaMA, Qwen2, Mistral, SmolLM: RMSNorm, SwiGLU MLP, rotary
positions), OPT and GPT-2 (LayerNorm, learned absolute positions), with CLIP features projected into
the LM's input sequence as LLaVA does.

Sequence of each example: [method prefix][visual tokens][text: task prefix + question][target].
  * training: the whole sequence, right-padded, one causal pass; the loss covers the target tokens
    only (the logit before each target token predicts it), per example as for the seq2seq LMs;
  * generation: the prompt (all but the target) left-padded, so every row continues at the same
    position; transformers' generate with the LM's KV cache, positions from the attention mask;
  * NLVR2: one pass over the prompt and the target's first token (`<s>` where the tokenizer has
    one), the next token's logits of each choice.
Positions: every pass gives the base model explicit `position_ids`, each row counting from its
first real token (`cumsum(mask) - 1`), and generate derives the same from the attention mask, so a
left-padded row sits at the positions it has alone. LLaMA-lineage rotary positions and GPT-2's
learned ones take `position_ids` as they are; OPT's learned positions (offset 2) would compute the
same from the mask (`cumsum(mask) * mask - 1`; only padding differs, -1 there, which is masked out).
The visual tokens take no position of their own beyond their place in the sequence.

Where the parts are (`Layout`, one per model type; the LLaMA lineage's is the default):
  * LLaMA lineage: blocks `model.layers`, adapter sites the outputs of `self_attn` and `mlp`, LoRA
    on `self_attn.q_proj` / `v_proj`, layer norms the RMSNorm class of `model.norm`;
  * OPT: blocks `model.decoder.layers`, sites the outputs of `self_attn` and of `fc2` (the FFN
    sublayer's output, before its dropout and the residual: OPT's decoder layer has no MLP module),
    LoRA on `self_attn.q_proj` / `v_proj`, layer norms nn.LayerNorm. OPT-350m's shape (a
    `word_embed_proj_dim` other than `hidden_size`, with project_in/out) is refused: its blocks are
    wider than the embeddings the visual tokens and adapters are sized by;
  * GPT-2: blocks `transformer.h`, sites the outputs of `attn` and `mlp` (GPT-2 applies its
    residual dropout inside these modules, so in training the adapters see the dropped-out output),
    layer norms nn.LayerNorm. Its attention has one fused `c_attn` (a Conv1D, x @ W + b) whose
    output is [q | k | v]; LoRA adapts the q and v thirds only: `query_value_of` gives two plain
    (unregistered, parameter-free) `FusedSlice` views of `c_attn`, which LoRA takes as its
    projections (in/out features d, d); a forward hook on one adds its
    update to that third of c_attn's output and leaves the rest, k included, as it was. The module
    tree, parameters and state dict are unchanged. (PEFT's LoRA on `c_attn` adapts q, k and v: another
    method.) BitFit trains the Conv1D biases, which are parameters named `bias` like Linear ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import torch
from torch import nn

from vlbench.config import UserError
from vlbench.lms.base import LMFamily, pad_ids, per_example_loss


@dataclass(frozen=True)
class Layout:
    """Where a decoder-only LM keeps its parts: attribute paths, from the *ForCausalLM model to the
    base model, from the base model to the block list, and in each block."""

    base: str  # the model whose forward gives the last hidden states (embeddings, positions, blocks, final norm)
    blocks: str  # the block ModuleList, under `base`
    attention: str  # each block's self-attention (an adapter site, and where LoRA's q/v are)
    ffn: str  # the module whose output is the block's FFN sublayer output, before the residual
    norm: type | None = None  # the layer-norm class; None: the class of `base.norm` (the lineage's RMSNorm)
    fused_qkv: str | None = None  # the attention's fused [q | k | v] Conv1D (GPT-2), LoRA adapting its q, v thirds


LLAMA = Layout(base="model", blocks="layers", attention="self_attn", ffn="mlp")
LAYOUTS = {  # by config.model_type; a type not listed here has the LLaMA lineage's
    "opt": Layout(base="model.decoder", blocks="layers", attention="self_attn", ffn="fc2", norm=nn.LayerNorm),
    "gpt2": Layout(base="transformer", blocks="h", attention="attn", ffn="mlp", norm=nn.LayerNorm, fused_qkv="c_attn"),
}


class FusedSlice:
    """One third of a fused [q | k | v] projection (GPT-2's `c_attn` Conv1D), as LoRA sees a Linear:
    `in_features`, `out_features` and `register_forward_hook`, whose hook gets this third of the
    fused output and returns its replacement; the other two thirds pass through as they were. A
    plain object, not a module: it adds nothing to the model's module tree or state dict."""

    def __init__(self, fused: nn.Module, part: int):
        self.in_features = fused.nx  # Conv1D(nf, nx): x (.., nx) @ W (nx, nf) + b
        self.out_features = fused.nf // 3
        self.fused = fused
        self.span = slice(part * self.out_features, (part + 1) * self.out_features)

    def register_forward_hook(self, hook):
        def on_fused(module, inputs, output):
            part = hook(self, inputs, output[..., self.span])
            if part is None:
                return None
            return torch.cat([output[..., : self.span.start], part, output[..., self.span.stop :]], dim=-1)

        return self.fused.register_forward_hook(on_fused)


class CausalFamily(LMFamily):
    name = "causal"
    stacks = ("decoder",)
    query_value = ("q_proj", "v_proj")

    def __init__(self, lm: nn.Module):
        super().__init__(lm)
        config = lm.config
        self.layout = LAYOUTS.get(config.model_type, LLAMA)
        if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
            raise UserError(
                f"an OPT with word_embed_proj_dim {config.word_embed_proj_dim} and hidden_size {config.hidden_size} "
                "(OPT-350m's shape) is not supported: its blocks are wider than its embeddings"
            )
        self.base = attrgetter(self.layout.base)(lm)
        # LlamaRMSNorm, Qwen2RMSNorm, ...; OPT's and GPT-2's nn.LayerNorm: the family's layer norm
        self.norm = self.layout.norm or type(self.base.norm)

    def layers(self, stack: str) -> nn.ModuleList:
        return attrgetter(self.layout.blocks)(self.base)

    def query_value_of(self, attention: nn.Module):
        """GPT-2: the q and v thirds of the fused `c_attn` (views made here; the model is not changed)."""
        if self.layout.fused_qkv is None:
            return super().query_value_of(attention)
        fused = getattr(attention, self.layout.fused_qkv)
        return FusedSlice(fused, 0), FusedSlice(fused, 2)

    def sublayers(self):
        for i, layer in enumerate(self.layers("decoder")):
            yield "decoder", i, "self_attn", getattr(layer, self.layout.attention)
            yield "decoder", i, "ffn", getattr(layer, self.layout.ffn)

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

    def hidden_states(self, rows: list[torch.Tensor], left: bool) -> torch.Tensor:
        """The LM's last hidden states (B, S, d) of the rows padded into one batch, on the left or right."""
        embeds, mask = pad(rows, left)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        return self.base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state

    def losses(self, model, batch):
        labels = batch["labels"]
        prompts = self.prompts(model, batch)
        embed = self.lm.get_input_embeddings()
        targets = [embed(row[row != -100]) for row in labels]
        hidden = self.hidden_states([torch.cat([p, t]) for p, t in zip(prompts, targets)], left=False)
        # target token k of example b is predicted by the hidden state just before it
        length = labels.shape[1]
        starts = torch.tensor([len(p) - 1 for p in prompts], device=hidden.device)
        index = (starts[:, None] + torch.arange(length, device=hidden.device)).clamp(max=hidden.shape[1] - 1)
        picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        return per_example_loss(picked, labels, batch["weights"], self.output_logits)

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
        hidden = self.hidden_states(rows, left=True)
        return self.output_logits(hidden[:, -1])[:, choice_ids]

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
