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
