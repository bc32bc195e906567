"""Distillation terms against sentence-transformers' own losses, and the in-batch KL by hand.

The worker-count invariance of every term (N ranks × b rows = 1 process × N·b) is proven with
real gloo groups in ``test_objective.py``.
"""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
import torch
from conftest import sample_rows

from sparse_ray.config import TrainConfig
from sparse_ray.data.lexical import LexicalStats, code_tokens
from sparse_ray.worker import distill


def _embeddings(rows: int = 6, columns: int = 4, dim: int = 40) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.rand(rows, dim) for _ in range(columns)]


def test_margin_mse_is_sentence_transformers_sparse_margin_mse():
    from sentence_transformers.sparse_encoder.losses import SparseMarginMSELoss

    q, *docs = _embeddings()
    teacher = torch.rand(6, 3) * 10
    stock = SparseMarginMSELoss(model=None).compute_loss_from_embeddings([q, *docs], teacher)
    train = TrainConfig(loss="margin_mse", teacher="data", teacher_scale=1.0)
    torch.testing.assert_close(distill.candidate_term(q, docs, teacher, train), stock)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_candidate_kl_is_sentence_transformers_sparse_distill_kl(temperature):
    from sentence_transformers.sparse_encoder.losses import SparseDistillKLDivLoss

    q, *docs = _embeddings()
    teacher = torch.rand(6, 3) * 10
    stock = SparseDistillKLDivLoss(model=None, temperature=temperature, teacher_temperature=1.0)
    expected = stock.compute_loss_from_embeddings([q, *docs], teacher)
    train = TrainConfig(loss="kl", teacher="data", teacher_scale=1.0, distill_temperature=temperature)
    torch.testing.assert_close(distill.candidate_term(q, docs, teacher, train), expected)


def test_teacher_embeddings_give_the_teachers_scaled_cosine_scores():
    vectors = torch.nn.functional.normalize(torch.rand(5, 4, 16), dim=-1)  # anchor, positive, 2 negatives
    train = TrainConfig(loss="kl", teacher="minilm", teacher_scale=20.0)
    scores = distill.teacher_row_scores(vectors.flatten(1), train, candidates=3)
    expected = torch.einsum("bd,bcd->bc", vectors[:, 0], vectors[:, 1:]) * 20.0
    torch.testing.assert_close(scores, expected)


def test_inbatch_teacher_matrix_lines_up_with_the_ranking_losss_candidates():
    from sparse_ray.worker.loss import global_scores

    vectors = torch.rand(4, 3, 8)  # anchor, positive, negative per row
    scores, own, _ = global_scores(vectors[:, 0], [vectors[:, 1], vectors[:, 2]], 1.0)
    teacher = distill.teacher_matrix(vectors.flatten(1), 2, own, world=1, train=TrainConfig())
    torch.testing.assert_close(teacher, scores)  # the same vectors on both sides: the same matrix


def _hybrid_rows(rows: int = 6) -> tuple[list[dict], LexicalStats, torch.Tensor]:
    """Real code rows; labels of random unit embeddings (dim 8) each followed by the text's BM25 terms."""
    data = [{"anchor": r["query"], "positive": r["document"], "negative": r["negatives"][0]} for r in sample_rows(rows)]
    stats = LexicalStats.fit([r[c] for r in data for c in ("positive", "negative")])
    torch.manual_seed(1)
    dense = torch.nn.functional.normalize(torch.randn(rows, 3, 8), dim=-1)
    terms = torch.tensor(
        np.array([[stats.terms(r[c], query=c == "anchor") for c in ("anchor", "positive", "negative")] for r in data])
    )
    return data, stats, torch.cat([dense, terms], dim=-1)


def test_hybrid_teacher_matrix_is_cosine_plus_weighted_bm25s_over_each_anchors_best():
    data, _, labels = _hybrid_rows()
    docs = [r["positive"] for r in data] + [r["negative"] for r in data]  # the loss's column order
    retriever = bm25s.BM25()
    retriever.index([code_tokens(d) for d in dict.fromkeys(docs)], show_progress=False)
    where = {d: i for i, d in enumerate(dict.fromkeys(docs))}
    bm25 = torch.tensor(np.stack([retriever.get_scores(code_tokens(r["anchor"])) for r in data]))
    bm25 = bm25[:, [where[d] for d in docs]]
    dense = labels[:, :, :8]
    cosine = dense[:, 0] @ torch.cat([dense[:, 1], dense[:, 2]]).T
    expected = cosine + 0.5 * bm25.float() / bm25.float().max(dim=1, keepdim=True).values
    train = TrainConfig(loss="inbatch_kl", teacher="minilm", teacher_lexical_weight=0.5)
    got = distill.teacher_matrix(labels.flatten(1), 2, torch.arange(6), world=1, train=train)
    assert float(bm25.max()) > 5
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    rows = distill.teacher_row_scores(labels.flatten(1), train, candidates=2)  # each row's own candidates
    own = torch.stack([bm25[torch.arange(6), torch.arange(6)], bm25[torch.arange(6), torch.arange(6) + 6]], dim=1)
    mine = torch.stack([cosine[torch.arange(6), torch.arange(6)], cosine[torch.arange(6), torch.arange(6) + 6]], dim=1)
    own = own.float() / own.float().max(dim=1, keepdim=True).values.clamp_min(1e-6)
    torch.testing.assert_close(rows, (mine + 0.5 * own) * train.teacher_scale, rtol=1e-4, atol=1e-3)


def test_softmax_kl_ignores_masked_candidates_and_is_zero_at_the_teacher():
    teacher = torch.tensor([[3.0, 1.0, float("-inf"), 0.5]])
    student = torch.tensor([[3.0, 1.0, float("-inf"), 0.5]], requires_grad=True)
    loss = distill.softmax_kl(student, teacher, 1.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(student.grad).all() and float(student.grad.abs().max()) < 1e-6
    other = torch.tensor([[0.0, 2.0, float("-inf"), 0.5]])
    p = torch.softmax(teacher[:, [0, 1, 3]], dim=1)
    log_q = torch.log_softmax(other[:, [0, 1, 3]], dim=1)
    expected = (p * (p.log() - log_q)).sum()
    torch.testing.assert_close(distill.softmax_kl(other, teacher, 1.0), expected)
