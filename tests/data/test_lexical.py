"""BM25 as hashed term vectors: the dot product of a query's and a document's vectors is bm25s' score."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
import torch
from conftest import sample_rows

from sparse_ray.data.lexical import TERMS, LexicalStats, _ids, bucket, code_tokens, scores


def _texts(n: int) -> tuple[list[str], list[str]]:
    rows = sample_rows(n)
    return [r["query"] for r in rows], list(dict.fromkeys(t for r in rows for t in (r["document"], *r["negatives"])))


def test_term_vector_scores_equal_bm25s_on_real_code():
    queries, docs = _texts(40)
    docs = [d for d in docs if len(set(code_tokens(d))) <= TERMS]  # longer ones keep their TERMS heaviest
    stats = LexicalStats.fit(docs)
    retriever = bm25s.BM25()  # lucene, k1 1.5, b 0.75
    retriever.index([code_tokens(d) for d in docs], show_progress=False)
    expected = np.stack([retriever.get_scores(code_tokens(q)) for q in queries])
    q, d = stats.term_matrix(queries, query=True), stats.term_matrix(docs, query=False)
    got = scores(q, d).numpy()
    assert expected.max() > 5 and (expected > 0).mean() > 0.2  # real overlap, not a page of zeros
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the ids survive DeepSpeed's bf16 cast of the label; the weights keep bf16's 3 digits
    in_bf16 = scores(q.bfloat16(), d.bfloat16()).numpy()
    np.testing.assert_allclose(in_bf16, expected, rtol=2e-2, atol=2e-2)
    assert _ids(q.bfloat16()).equal(_ids(q))
    first = {i for i in _ids(q[:1]).flatten().tolist() if i >= 0}
    assert first == {bucket(t) for t in code_tokens(queries[0])}


def test_long_texts_keep_their_heaviest_terms_and_empty_ones_score_zero():
    stats = LexicalStats.fit(["alpha beta", "gamma"])
    many = " ".join(f"word{i}x" for i in range(TERMS + 50))
    vec = torch.from_numpy(stats.terms(many, query=True)).unsqueeze(0)
    assert len(set(_ids(vec).flatten().tolist())) == TERMS and (_ids(vec) >= 0).all()
    empty = stats.terms("!!! ...", query=False)
    assert (empty[: 3 * TERMS] == -1).all() and (empty[3 * TERMS :] == 0).all()
    got = scores(torch.from_numpy(np.stack([stats.terms("alpha", True)])), torch.from_numpy(np.stack([empty])))
    assert got.item() == 0.0


def test_no_documents_is_one_line():
    with pytest.raises(ValueError, match="at least one document"):
        LexicalStats.fit([])


def test_statistics_without_a_code_token_give_every_term_the_idf_of_df_0():
    stats = LexicalStats.fit(["!!!", "..."])
    vec = stats.terms("alpha beta", query=True)
    assert vec[3 * TERMS : 3 * TERMS + 2].tolist() == pytest.approx([np.log1p(2.5 / 0.5)] * 2)
