import pytest
import torch

from conftest import FEAT_DIM, random_batch, tiny_vl_model
from test_t5 import tiny_t5_model


def test_visual_tokens_pool_and_image_order(vl_model):
    feats = torch.randn(2, 2, 16, FEAT_DIM)  # two images of a 4x4 grid, pooled to 3x3
    tokens, img_order, obj_order = vl_model.visual_tokens(feats)
    assert tokens.shape == (2, 18, FEAT_DIM)
    assert img_order[0].tolist() == [0] * 9 + [1] * 9
    assert obj_order[0].tolist() == list(range(9)) * 2
    grid = feats[0, 1].reshape(4, 4, FEAT_DIM)
    assert torch.equal(tokens[0, 9], grid[:2, :2].amax((0, 1)))  # adaptive max pool, first cell of image 2


def test_encoder_appends_visual_tokens_after_text(vl_model):
    batch = random_batch(batch_size=2, text_len=5)
    vl_model.eval()
    enc, mask = vl_model.encode(batch["input_ids"], batch["attention_mask"], batch["feats"])
    assert enc.last_hidden_state.shape == (2, 5 + 9, 64)
    assert mask.shape == (2, 14)
    # the text tokens' embeddings do not depend on where the visual tokens sit: changing the image
    # changes encoder outputs but the text embedding step (before attention) is image independent
    other = dict(batch, feats=torch.randn_like(batch["feats"]))
    enc2, _ = vl_model.encode(other["input_ids"], other["attention_mask"], other["feats"])
    assert not torch.allclose(enc.last_hidden_state, enc2.last_hidden_state)


def test_encoder_prefix_is_prepended(vl_model):
    batch = random_batch(batch_size=2, text_len=5)
    vl_model.encoder_prefix = lambda n: torch.zeros(n, 7, 64)
    enc, mask = vl_model.encode(batch["input_ids"], batch["attention_mask"], batch["feats"])
    assert enc.last_hidden_state.shape[1] == 7 + 5 + 9
    assert mask[:, :7].all()


def test_loss_is_weighted_per_example(vl_model):
    vl_model.eval()
    batch = random_batch()
    full = vl_model.loss(batch)
    halved = vl_model.loss(dict(batch, weights=torch.full((3,), 0.5)))
    assert torch.isfinite(full)
    assert torch.allclose(halved, full / 2)
    full.backward()
    assert vl_model.visual_embedding.feat_embedding[0].weight.grad is not None


def test_generate_and_choice_logits(vl_model):
    vl_model.eval()
    batch = random_batch(batch_size=2)
    out = vl_model.generate(batch, num_beams=2, max_new_tokens=4)
    assert out.shape[0] == 2 and out.shape[1] <= 5
    assert vl_model.choice_logits(batch, [7, 9]).shape == (2, 2)


def test_visual_identity_uses_last_vocab_rows():
    model = tiny_vl_model()
    table = model.lm.get_input_embeddings()
    vocab = table.num_embeddings
    with torch.no_grad():
        table.weight[vocab - 1].fill_(5.0)  # the row of object 0
    feats = torch.zeros(1, 1, 1, FEAT_DIM)
    order = torch.zeros(1, 1, dtype=torch.long)
    emb_obj0 = model.visual_embedding(feats.reshape(1, 1, FEAT_DIM), order, order)
    emb_obj1 = model.visual_embedding(feats.reshape(1, 1, FEAT_DIM), order, order + 1)
    assert torch.allclose(emb_obj0 - emb_obj1, table.weight[vocab - 1] - table.weight[vocab - 2])


def test_forward_gives_weighted_per_example_losses_and_loss_is_their_mean(vl_model):
    vl_model.eval()
    batch = random_batch()
    per_example = vl_model(batch)
    assert per_example.shape == (3,)
    assert torch.allclose(vl_model.loss(batch), per_example.mean())
    weights = torch.tensor([1.0, 0.0, 2.0])
    assert torch.allclose(vl_model(dict(batch, weights=weights)), per_example * weights)
    # a row's loss does not depend on the other rows of its batch (what a DDP shard relies on)
    assert torch.allclose(vl_model({k: v[1:] for k, v in batch.items()}), per_example[1:], atol=1e-6)


def test_per_example_loss_is_each_targets_mean_token_nll():
    """Against the definition: -log softmax at the label, averaged over each row's non-ignored tokens."""
    from vlbench.lms.base import per_example_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=gen)
    labels = torch.tensor([[1, 2, -100, -100], [3, 0, 6, 5]])
    weights = torch.tensor([1.0, 0.5])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([
        -(logp[0, 0, 1] + logp[0, 1, 2]) / 2,
        -(logp[1, 0, 3] + logp[1, 1, 0] + logp[1, 2, 6] + logp[1, 3, 5]) / 4 * 0.5,
    ])
    # the head runs on the target positions only: here it is the identity on logits, and counts its rows
    rows = []
    head = lambda h: rows.append(len(h)) or h  # noqa: E731
    assert torch.allclose(per_example_loss(logits, labels, weights, head), expected, atol=1e-6)
    assert rows == [6]


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_training_loss_matches_the_lms_own_forward(family):
    """The families run the LM head at target positions only (`output_logits`); the loss must be the
    one of transformers' full forward (BART's final_logits_bias, T5's tied-head scaling included)."""
    import torch.nn.functional as F

    from vlbench.lms.seq2seq import shift_right

    model = tiny_vl_model() if family == "bart" else tiny_t5_model()
    model.eval()
    lm = model.lm
    if family == "bart":
        lm.final_logits_bias.normal_()  # zeros in a fresh model: make it count
    batch = random_batch()
    batch["labels"][1, 2:] = -100
    enc, mask = model.encode_batch(batch)
    config = lm.config
    decoder_input_ids = shift_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id)
    logits = lm(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    token_nll = F.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=-100, reduction="none")
    target = (batch["labels"] != -100).float()
    expected = (token_nll * target).sum(1) / target.sum(1)
    assert torch.allclose(model(batch), expected, atol=1e-5)
