"""Document windows against the stock encoder: every window encoded on its own, then the weighted max."""

from __future__ import annotations

import pytest
import torch

from sparse_ray import windows
from sparse_ray.errors import ConfigError
from sparse_ray.fused_head import use_fused_head
from sparse_ray.model import build_model, load_sparse_encoder

SEQ = 16  # tokens per window: the sample's functions are several windows long
LONG = "def load(path):\n    with open(path) as fh:\n        data = json.load(fh)\n    " + " ".join(
    f"value_{i} = data.get('key_{i}', {i})" for i in range(12)
)
SHORT = "def add(a, b): return a + b"


def _stock_windows(model, text: str, count: int, weight: float) -> torch.Tensor:
    """The expected vector: each of the first ``count`` windows of ``text`` through the stock
    modules as a batch of one, scaled (all but the first), then the elementwise max."""
    tok = model.tokenizer(
        text, max_length=SEQ, truncation=True, return_overflowing_tokens=True, return_tensors="pt", padding=True
    )
    vectors = []
    for i in range(min(count, len(tok["input_ids"]))):
        one = {k: tok[k][i : i + 1] for k in ("input_ids", "attention_mask", "token_type_ids") if k in tok}
        length = int(one["attention_mask"].sum())
        one = {k: v[:, :length] for k, v in one.items()}  # unpadded, as a text of its own
        with torch.no_grad():
            vec = model(one)["sentence_embedding"][0]
        vectors.append(vec * (1.0 if i == 0 else weight))
    return torch.stack(vectors).amax(dim=0)


@pytest.fixture(scope="module")
def splade(tiny_base):
    torch.manual_seed(0)
    return build_model("splade", tiny_base, SEQ)


def test_a_long_document_is_the_weighted_max_of_its_windows_and_queries_are_untouched(splade, tiny_base):
    stock_doc = splade.encode_document([LONG, SHORT], convert_to_tensor=True).to_dense()
    stock_query = splade.encode_query([LONG], convert_to_tensor=True).to_dense()
    assert len(splade.tokenizer(LONG)["input_ids"]) > 3 * SEQ  # at least four windows
    expected = torch.stack([_stock_windows(splade, LONG, 3, 0.5), _stock_windows(splade, SHORT, 3, 0.5)])
    assert (expected[0] != stock_doc[0]).any()  # the tail adds weight the first window lacks

    model = build_model("splade", tiny_base, SEQ)
    model.load_state_dict(splade.state_dict())
    assert windows.use_document_windows(model, windows.DocumentWindows(3, 0.5)) == 1
    doc = model.encode_document([LONG, SHORT], convert_to_tensor=True, batch_size=2).to_dense()
    torch.testing.assert_close(doc, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(doc[1], stock_doc[1], rtol=1e-5, atol=1e-6)  # one window: as before
    query = model.encode_query([LONG], convert_to_tensor=True).to_dense()
    torch.testing.assert_close(query, stock_query)  # queries read the first window, as trained

    use_fused_head(model)  # what evaluation loads: the fused head under the windows
    torch.testing.assert_close(
        model.encode_document([LONG, SHORT], convert_to_tensor=True).to_dense(), expected, rtol=1e-5, atol=1e-5
    )


def test_inference_free_windows_its_documents_only(tiny_base):
    torch.manual_seed(0)
    model = build_model("inference_free_splade", tiny_base, SEQ)
    before_q = model.encode_query([LONG], convert_to_tensor=True).to_dense()
    assert windows.use_document_windows(model, windows.DocumentWindows(2, 1.0)) == 1
    doc_stack = [m for m in model.modules() if type(m).__name__ == "SpladePooling"]
    assert doc_stack  # the Router's document route
    docs = model.encode_document([LONG], convert_to_tensor=True).to_dense()
    one = build_model("inference_free_splade", tiny_base, SEQ)
    one.load_state_dict(model.state_dict())
    first = one.encode_document([LONG], convert_to_tensor=True).to_dense()
    assert (docs >= first - 1e-6).all() and (docs > first + 1e-6).any()  # a plain max adds the 2nd window's terms
    torch.testing.assert_close(model.encode_query([LONG], convert_to_tensor=True).to_dense(), before_q)


def test_saved_windows_are_applied_by_sparse_ray_and_ignored_by_a_plain_load(splade, tmp_path):
    from sentence_transformers import SparseEncoder

    path = str(tmp_path / "m")
    splade.save(path)
    windows.write(path, windows.DocumentWindows(1, 0.3))
    assert windows.read(path) == windows.DocumentWindows()  # one window writes nothing
    windows.write(path, windows.DocumentWindows(4, 0.25))
    assert windows.read(path) == windows.DocumentWindows(4, 0.25)
    from sparse_ray.tools.report import load_model

    expected = _stock_windows(splade, LONG, 4, 0.25)
    ours = load_sparse_encoder(path).encode_document([LONG], convert_to_tensor=True).to_dense()
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-6)  # indexing and serving load this way
    evaluated = load_model(path).encode_document([LONG], convert_to_tensor=True).to_dense()  # sparse-ray evaluate
    torch.testing.assert_close(evaluated[0], expected, rtol=1e-5, atol=1e-5)
    plain = SparseEncoder(path, device="cpu").encode_document([LONG], convert_to_tensor=True).to_dense()
    torch.testing.assert_close(plain, splade.encode_document([LONG], convert_to_tensor=True).to_dense())


@pytest.mark.parametrize(
    ("count", "weight", "said"),
    [(0, 0.4, "count must be an integer >= 1, got 0"), (2, 0.0, "tail_weight must be in (0, 1], got 0.0")],
)
def test_bad_windows_are_one_line_errors(tmp_path, count, weight, said):
    with pytest.raises(ConfigError, match=r"^document windows: " + said.replace("(", r"\(").replace(")", r"\)")):
        windows.DocumentWindows(count, weight)
    (tmp_path / windows.FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a document-windows file"):
        windows.read(str(tmp_path))
