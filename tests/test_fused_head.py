"""The fused SPLADE head against the stock modules: the same embeddings and the same gradients."""

from __future__ import annotations

import pytest
import torch

from sparse_ray.fused_head import MaskedMaxLogits, fused_splade, use_fused_head


def _stock(hidden, weight, bias, mask):
    """SpladePooling(max, relu) on the fill-mask logits, as sentence-transformers computes it."""
    logits = hidden @ weight.T + bias
    return torch.max(torch.log1p(torch.relu(logits * mask.unsqueeze(-1))), dim=1).values


def _inputs(seed: int, ties: bool = False):
    torch.manual_seed(seed)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    if ties:  # positions 1 and 3 of the first text are the same token state: tied maxima
        with torch.no_grad():
            hidden[0, 3] = hidden[0, 1]
    return hidden, weight, bias, mask


@pytest.mark.parametrize("ties", [False, True])
def test_fused_equals_stock_forward_and_gradients(monkeypatch, ties):
    monkeypatch.setattr("sparse_ray.fused_head.CHUNK", 16)  # several vocabulary chunks
    monkeypatch.setattr("sparse_ray.fused_head.PAIRS", 7)  # several gather chunks
    upstream = torch.randn(3, 50)
    results = []
    for fn in (_stock, fused_splade):
        h, w, b, m = _inputs(0, ties)
        out = fn(h, w, b, m)
        (out * upstream).sum().backward()
        results.append((out.detach(), h.grad, w.grad, b.grad))
    (out_s, gh_s, gw_s, gb_s), (out_f, gh_f, gw_f, gb_f) = results
    assert (out_s - out_f).abs().max() <= 1e-5
    torch.testing.assert_close(gw_f, gw_s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb_f, gb_s, rtol=1e-4, atol=1e-6)
    if ties:  # which tied position gets the gradient is arbitrary; their sum is not
        gh_s, gh_f = gh_s.clone(), gh_f.clone()
        for g in (gh_s, gh_f):
            g[0, 1] += g[0, 3]
            g[0, 3] = 0
    torch.testing.assert_close(gh_f, gh_s, rtol=1e-4, atol=1e-6)
    assert gh_f[1, 4:].abs().sum() == 0 and gh_f[2, 2:].abs().sum() == 0  # padding gets nothing


def test_masked_max_never_picks_padding():
    h, w, b, m = _inputs(1)
    with torch.no_grad():
        h[1, 5] = 100.0  # a huge state at a padded position
    best = MaskedMaxLogits.apply(h, w, b, m)
    torch.testing.assert_close(best[1], (h[1, :4] @ w.T + b).max(dim=0).values)


def test_fused_model_matches_the_stock_model(tiny_base):
    from sparse_ray.model import build_model

    texts = ["read a json config file", "def load(path):\n    return json.load(open(path))", "x"]
    grads, embeddings = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model("splade", tiny_base, 32, dropout=0.0)
        if fused:
            assert use_fused_head(model) is None
        model.train()
        emb = model(dict(model.preprocess(texts)))["sentence_embedding"]
        (emb * torch.linspace(0, 1, emb.shape[1])).sum().backward()
        embeddings.append(emb.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert (embeddings[0] - embeddings[1]).abs().max() <= 1e-5
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():  # fp32 sums in another order: within 1e-5 of each tensor's scale
        gap = float((grads[1][name] - grad).abs().max())
        assert gap <= 1e-5 * float(grad.abs().max()) + 1e-7, (name, gap)


def test_the_fused_model_saves_in_the_stock_layout(tiny_base, tmp_path):
    from sentence_transformers import SparseEncoder

    from sparse_ray.model import build_model

    torch.manual_seed(0)
    model = build_model("splade", tiny_base, 32)
    stock = model.encode_document(["open a file"], convert_to_tensor=True).to_dense()
    assert use_fused_head(model) is None
    fused = model.encode_document(["open a file"], convert_to_tensor=True).to_dense()
    model.save(str(tmp_path / "m"))
    loaded = SparseEncoder(str(tmp_path / "m"), device="cpu")  # plain sentence-transformers, stock forward
    again = loaded.encode_document(["open a file"], convert_to_tensor=True).to_dense()
    torch.testing.assert_close(fused, stock, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, stock, rtol=0, atol=1e-5)
    assert "fused" not in (tmp_path / "m" / "modules.json").read_text()


def _model_grads(base: str, fused: bool, bf16: bool = False, checkpointing: bool = False):
    import contextlib

    from sparse_ray.model import build_model

    texts = ["read a json config file", "def load(path):\n    return json.load(open(path))", "x"]
    torch.manual_seed(0)
    model = build_model("splade", base, 32, dropout=0.0)
    if checkpointing:
        model[0].model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fused:
        assert use_fused_head(model) is None
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        emb = model(dict(model.preprocess(texts)))["sentence_embedding"]
    (emb.float() * torch.linspace(0, 1, emb.shape[1])).sum().backward()
    return emb.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_fused_head_under_gradient_checkpointing_equals_stock(tiny_base):
    emb_s, grads_s = _model_grads(tiny_base, fused=False, checkpointing=True)
    emb_f, grads_f = _model_grads(tiny_base, fused=True, checkpointing=True)
    assert _gap(emb_s, emb_f) <= 1e-5 and grads_s.keys() == grads_f.keys()
    for name, grad in grads_s.items():
        assert _gap(grads_f[name], grad) <= 1e-5 * float(grad.abs().max()) + 1e-7, name


def test_fused_head_under_bf16_autocast_is_within_bf16_noise_of_stock(tiny_base):
    """bf16 rounds the head's products either way; the fused gradients must sit within bf16 rounding
    of the stock bf16 ones (3 × their own gap to fp32 plus 3 % of scale), for every tensor with a
    non-negligible gradient."""
    emb_32, grads_32 = _model_grads(tiny_base, fused=False)
    emb_s, grads_s = _model_grads(tiny_base, fused=False, bf16=True)
    emb_f, grads_f = _model_grads(tiny_base, fused=True, bf16=True)
    assert _gap(emb_s, emb_f) <= 1e-2 * float(emb_s.abs().max())
    top = max(float(g.abs().max()) for g in grads_s.values())
    checked = 0
    for name, grad in grads_s.items():
        if float(grad.abs().max()) < 1e-4 * top:  # e.g. attention key biases: zero up to rounding
            continue
        noise = _gap(grad, grads_32[name])
        # bf16 keeps ~3 significant digits: sums in another order differ by a few % of scale (seen: 2 %);
        # a wrong routing of the gradient would be off by the scale itself
        assert _gap(grads_f[name], grad) <= 3 * noise + 3e-2 * float(grad.abs().max()), name
        checked += 1
    assert checked > 10
