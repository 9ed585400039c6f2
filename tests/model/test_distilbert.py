"""Numerical parity with transformers' DistilBERT on padded batches of different lengths."""

import pytest
import torch

from distilsent.model.config import DistilBertConfig
from distilsent.model.distilbert import DistilBertForSequenceClassification, sinusoidal_positions

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "tiny": dict(vocab_size=120, dim=32, n_heads=4, n_layers=2, hidden_dim=64, max_position_embeddings=40),
    "tiny-relu-sinusoidal-3-labels": dict(
        vocab_size=120, dim=24, n_heads=3, n_layers=3, hidden_dim=48, max_position_embeddings=40,
        activation="relu", sinusoidal_pos_embds=True, id2label={0: "a", 1: "b", 2: "c"},
    ),
    "distilbert-base": {},
}


def reference_model(config: DistilBertConfig):
    fields = {k: v for k, v in config.to_dict().items() if k != "architectures"}
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(**fields)).eval()


def padded_batch(config: DistilBertConfig, lengths=(7, 19, 3, 12)):
    generator = torch.Generator().manual_seed(1)
    width = max(lengths)
    ids = torch.randint(5, config.vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, config.pad_token_id), mask


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_hidden_states_match_transformers(name):
    config = DistilBertConfig(**CONFIGS[name])
    torch.manual_seed(0)
    ours = DistilBertForSequenceClassification(config).eval()
    theirs = reference_model(config)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids, mask = padded_batch(config)
    with torch.no_grad():
        logits, hidden = ours.forward_with_hidden_states(ids, mask)
        reference = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert logits.shape == (4, config.num_labels)
    torch.testing.assert_close(logits, reference.logits, atol=1e-4, rtol=0)
    assert len(hidden) == len(reference.hidden_states) == config.n_layers + 1
    for ours_h, ref_h in zip(hidden, reference.hidden_states):
        real = mask.bool()  # padding positions are never read by the classifier or the next layer
        torch.testing.assert_close(ours_h[real], ref_h[real], atol=1e-4, rtol=0)


def test_padding_does_not_change_a_text():
    config = DistilBertConfig(**CONFIGS["tiny"])
    model = DistilBertForSequenceClassification(config).eval()
    ids, mask = padded_batch(config)
    with torch.no_grad():
        batched = model(ids, mask)
        alone = model(ids[2:3, :3], mask[2:3, :3])
    torch.testing.assert_close(batched[2:3], alone, atol=1e-5, rtol=0)


def test_parameter_names_are_the_hugging_face_state_dict():
    config = DistilBertConfig(**CONFIGS["tiny"])
    ours = set(DistilBertForSequenceClassification(config).state_dict())
    theirs = set(reference_model(config).state_dict())
    assert ours == theirs
    assert "distilbert.transformer.layer.0.attention.q_lin.weight" in ours


def test_base_size_has_67m_parameters():
    model = DistilBertForSequenceClassification(DistilBertConfig())
    assert 66_900_000 < model.num_parameters() < 67_000_000


def test_sinusoidal_table_matches_transformers():
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    expected = create_sinusoidal_embeddings(50, 16, torch.empty(50, 16))
    torch.testing.assert_close(sinusoidal_positions(50, 16), expected)


def test_dropout_only_in_training():
    config = DistilBertConfig(**CONFIGS["tiny"])
    model = DistilBertForSequenceClassification(config)
    ids, mask = padded_batch(config)
    model.train()
    assert not torch.equal(model(ids, mask), model(ids, mask))
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))
