"""vlbench's decoding gives transformers' `generate` tokens exactly (greedy and beam search)."""

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from vlbench import decoding

D = 32


def bart(vocab: int, **generation) -> BartForConditionalGeneration:
    config = BartConfig(vocab_size=vocab, d_model=D, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        init_std=0.3)  # fmt: skip  # a wide init: the output depends on the input
    lm = BartForConditionalGeneration(config).eval()
    for key, value in generation.items():
        setattr(lm.generation_config, key, value)
    return lm


def t5(vocab: int) -> T5ForConditionalGeneration:
    # t5-base's ids: pad 0 (generate then pads beam outputs with </s>), </s> 1, the decoder starts from pad
    config = T5Config(vocab_size=vocab, d_model=D, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
    lm = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # T5's initialisation makes a random decoder ignore its input; widen it
        for name, weight in lm.named_parameters():
            if "layer_norm" not in name:
                weight.normal_(0, 0.3)
    return lm


LMS = {
    # a small vocabulary: random weights emit </s> often, so rows finish at different steps
    "bart": lambda: bart(14),
    # facebook/bart-base's generation config: forced <s> first, no repeated trigram, forced </s> last
    "bart-base-generation": lambda: bart(14, no_repeat_ngram_size=3, forced_bos_token_id=0),
    "t5": lambda: t5(12),
    "bart-large-vocab": lambda: bart(300),  # few rows finish before the budget
}


@pytest.mark.parametrize("name", LMS)
@pytest.mark.parametrize("num_beams,max_new_tokens", [(1, 8), (3, 6), (5, 12)])
def test_equals_transformers_generate(name, num_beams, max_new_tokens):
    torch.manual_seed(0)
    lm = LMS[name]()
    lengths = set()
    for trial in range(4):
        encoded = torch.randn(7, 9, D) * (1 + trial)
        mask = torch.ones(7, 9, dtype=torch.long)
        mask[:3, -3:] = 0  # padded encoder positions
        with torch.no_grad():
            expected = lm.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), attention_mask=mask,
                                   num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                   early_stopping=num_beams > 1)  # fmt: skip
            got = decoding.generate(lm, encoded, mask, num_beams, max_new_tokens)
        assert got.shape == expected.shape
        assert torch.equal(got, expected)
        lengths.update(decoding_lengths(got, lm))
    if name != "bart-large-vocab":  # the cases must exercise rows that leave the batch early
        assert len(lengths) > 1


def decoding_lengths(tokens: torch.Tensor, lm) -> list[int]:
    eos = lm.generation_config.eos_token_id
    return [int((row == eos).nonzero()[0]) if (row == eos).any() else row.numel() for row in tokens[:, 1:]]


def test_unsupported_generation_setting_is_refused():
    lm = bart(14, repetition_penalty=1.3)
    with pytest.raises(ValueError, match="repetition_penalty"):
        decoding.generate(lm, torch.randn(2, 3, D), torch.ones(2, 3, dtype=torch.long), 1, 4)


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_beams_attend_to_one_copy_of_the_encoders_keys_and_values(name, monkeypatch):
    """Each cross-attention step of beam search runs grouped (K queries per example against the
    example's one cached copy), and the LM's attention implementation is its own again afterwards."""
    lm = LMS[name]()
    shapes = []

    def spy(module, query, key, value, attention_mask, *, inner, **kwargs):
        if query.shape[0] != key.shape[0]:
            shapes.append((query.shape[0], key.shape[0]))
        return grouped(module, query, key, value, attention_mask, inner=inner, **kwargs)

    grouped = decoding.grouped_attention
    monkeypatch.setattr(decoding, "grouped_attention", spy)
    encoded, mask = torch.randn(4, 9, D), torch.ones(4, 9, dtype=torch.long)
    with torch.no_grad():
        decoding.generate(lm, encoded, mask, num_beams=3, max_new_tokens=5)
    assert shapes and all(rows == 3 * examples for rows, examples in shapes)
    assert shapes[0] == (12, 4)  # every example still decoding at the second step
    assert lm.config._attn_implementation == lm.get_decoder().config._attn_implementation == "sdpa"
