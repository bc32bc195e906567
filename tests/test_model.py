"""Model builders: dropout override, and the one line that replaces transformers' load report."""

from __future__ import annotations

import torch

from sparse_ray.model import build_model


def test_dropout_override_reaches_every_dropout_layer_and_the_config(tiny_base):
    default = build_model("splade", tiny_base, 32)
    assert {m.p for m in default.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    off = build_model("splade", tiny_base, 32, dropout=0.0)
    layers = [m for m in off.modules() if isinstance(m, torch.nn.Dropout)]
    assert layers and all(m.p == 0.0 for m in layers)
    assert off[0].model.config.hidden_dropout_prob == 0.0
    off.train()
    features = off.preprocess(["read a json file", "parse the config"])
    first, second = (off(dict(features))["sentence_embedding"] for _ in range(2))
    torch.testing.assert_close(first, second)  # in train mode, without dropout, a forward is deterministic


def test_a_replaced_head_is_said_in_one_line(tiny_base):
    lines: list[str] = []
    build_model("splade", tiny_base, 32, head_init="lexical", head_bias=-4.0, log=lines.append)
    assert lines == ["model.head_init=lexical: lexical head initialised (bias -4)"]
    build_model("splade", tiny_base, 32, head_init="pretrained", log=lines.append)
    assert len(lines) == 1  # a kept head is not announced


def test_split_identifiers_is_a_space_at_each_identifier_boundary_and_survives_a_plain_load(tiny_base, tmp_path):
    from sentence_transformers import SparseEncoder

    stock = build_model("splade", tiny_base, 32)
    split = build_model("splade", tiny_base, 32, split_identifiers=True)
    text = "def getUserName(self): return HTTPServer.readAll(to2D)"
    spaced = "def get User Name(self): return HTTP Server.read All(to2 D)"
    ids = split.tokenizer(text)["input_ids"]
    assert ids == stock.tokenizer(spaced)["input_ids"] != stock.tokenizer(text)["input_ids"]
    prose = "Read the settings file and return its values."
    assert split.tokenizer(prose)["input_ids"] == stock.tokenizer(prose)["input_ids"]  # nothing else changes
    split.save(str(tmp_path / "m"))
    loaded = SparseEncoder(str(tmp_path / "m"), device="cpu")  # plain sentence-transformers, no sparse-ray code
    assert loaded.tokenizer(text)["input_ids"] == ids
    torch.testing.assert_close(
        loaded.encode([text], convert_to_tensor=True).to_dense(),
        split.encode([text], convert_to_tensor=True).to_dense(),
    )
    free = build_model("inference_free_splade", tiny_base, 32, split_identifiers=True)
    query, spaced_query = (
        free.encode_query([q], convert_to_tensor=True).to_dense() for q in ("getUserName", "get User Name")
    )
    torch.testing.assert_close(query, spaced_query)  # the query side (a vocabulary lookup) splits too


def test_split_identifiers_refuses_a_slow_tokenizer_in_one_line():
    import pytest

    from sparse_ray.errors import ConfigError
    from sparse_ray.model import identifier_tokenizer

    class SlowTokenizer:  # what a checkpoint without tokenizer.json gives: no backend_tokenizer
        pass

    with pytest.raises(ConfigError, match="needs a fast .tokenizers. tokenizer; this base has SlowTokenizer"):
        identifier_tokenizer(SlowTokenizer())
