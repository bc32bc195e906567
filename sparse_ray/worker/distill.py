"""Distillation terms of the objective: the student's scores matched to a teacher's.

Data contract (the ``label`` column, ``data/pipeline.py``): per row either the teacher's scores of
the row's candidates, shape ``(1 + k)`` (positive first: ``train.teacher=data``), or the teacher's
L2-normalised embeddings of anchor, positive and negatives, ``(2 + k) × dim`` flattened (a teacher
model, ``data/teacher.py``), each followed by its BM25 term vector when
``train.teacher_lexical_weight`` w > 0. The teacher's score is then a hybrid, cosine + w × BM25 /
(the anchor's highest BM25 over the candidates it is scored against): dense and lexical scorers
miss different functions, and the sum ranks better than either. Teacher similarities are
multiplied by ``train.teacher_scale``.

- ``margin_mse``: mean over rows and negatives of ``((s_pos − s_neg) − (t_pos − t_neg))²``
  (sentence-transformers' SparseMarginMSELoss).
- ``kl``: ``KL(softmax(t) ‖ softmax(s / T))·T²`` over the row's own candidates, batch mean
  (sentence-transformers' SparseDistillKLDivLoss with the teacher's temperature folded into its scale).
- ``inbatch_kl``: the same KL over the *global* in-batch matrix: every anchor of this rank against
  every candidate of every rank (the teacher's matrix is built from gathered teacher embeddings),
  with the ranking loss's false-negative mask applied to both sides.

Each is a mean over this rank's rows, so after DDP/ZeRO averaging N ranks × b rows optimise what
one process on N·b rows does (``tests/worker/test_objective.py``).
"""

from __future__ import annotations

import torch
from sentence_transformers.util.distributed import all_gather

from sparse_ray.config import TrainConfig
from sparse_ray.data import lexical


def row_scores(queries: torch.Tensor, docs: list[torch.Tensor]) -> torch.Tensor:
    """Each anchor's dot product with its own candidates, ``(b, 1 + k)``."""
    return torch.stack([(queries * d).sum(dim=1) for d in docs], dim=1)


def split_label(labels: torch.Tensor, candidates: int, train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A teacher model's label as embeddings ``(b, 1 + candidates, dim)`` and BM25 term vectors
    ``(b, 1 + candidates, lexical.WIDTH)`` (None without ``teacher_lexical_weight``)."""
    vectors = labels.float().view(labels.shape[0], candidates + 1, -1)
    if not train.teacher_lexical_weight:
        return vectors, None
    return vectors[..., : -lexical.WIDTH], labels.view(labels.shape[0], candidates + 1, -1)[..., -lexical.WIDTH :]


def hybrid_scores(
    queries: torch.Tensor,
    docs: torch.Tensor,
    query_terms: torch.Tensor | None,
    doc_terms: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """The teacher's ``(n, m)`` scores: cosine, plus ``weight`` × BM25 over each row's highest."""
    dense = queries @ docs.T
    if query_terms is None or doc_terms is None:
        return dense
    bm25 = lexical.scores(query_terms, doc_terms)
    return dense + weight * bm25 / bm25.max(dim=1, keepdim=True).values.clamp_min(1e-6)


def teacher_row_scores(labels: torch.Tensor, train: TrainConfig, candidates: int) -> torch.Tensor:
    """The teacher's scaled scores of each row's ``candidates`` (positive first), ``(b, candidates)``."""
    if train.teacher == "data":
        assert labels.shape[1] == candidates, "the data's scores: one per candidate"
        return labels.float() * train.teacher_scale
    vectors, terms = split_label(labels, candidates, train)
    rows = []
    for i in range(labels.shape[0]):  # each row against its own candidates (BM25 normalised per row)
        q_terms, d_terms = (None, None) if terms is None else (terms[i, :1], terms[i, 1:])
        rows.append(hybrid_scores(vectors[i, :1], vectors[i, 1:], q_terms, d_terms, train.teacher_lexical_weight))
    return torch.cat(rows) * train.teacher_scale


def margin_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE of the positive-minus-negative margins, rows ``(b, 1 + k)`` positive first."""
    return torch.nn.functional.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def softmax_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher) ‖ softmax(student / T))·T²``, mean over rows; ``-inf`` entries (masked
    candidates, on both sides) carry no mass."""
    log_p = torch.log_softmax(student / temperature, dim=1)
    q = torch.softmax(teacher.detach(), dim=1)
    terms = (q * (torch.log(q.clamp_min(1e-30)) - log_p)).masked_fill(q == 0, 0.0)  # 0 · log 0 = 0
    return terms.sum(dim=1).mean() * temperature**2


def teacher_matrix(
    labels: torch.Tensor, candidates: int, own: torch.Tensor, world: int, train: TrainConfig
) -> torch.Tensor:
    """The teacher's score matrix of this rank's anchors against every rank's candidates, in the
    order the ranking loss concatenates them (column by column, each column rank by rank)."""
    if world > 1:
        labels = all_gather(labels)
    vectors, terms = split_label(labels, candidates, train)

    def columns(x: torch.Tensor) -> torch.Tensor:  # candidates column by column, rank by rank
        return x[:, 1:].transpose(0, 1).reshape(-1, x.shape[-1])

    q_terms, d_terms = (None, None) if terms is None else (terms[own, 0], columns(terms))
    return hybrid_scores(vectors[own, 0], columns(vectors), q_terms, d_terms, train.teacher_lexical_weight)


def candidate_term(
    queries: torch.Tensor, docs: list[torch.Tensor], labels: torch.Tensor, train: TrainConfig
) -> torch.Tensor:
    """The ``margin_mse`` or ``kl`` term on each row's own candidates."""
    student = row_scores(queries, docs)
    teacher = teacher_row_scores(labels, train, len(docs))
    if train.distill_loss == "margin_mse":
        return margin_mse(student, teacher)
    return softmax_kl(student, teacher, train.distill_temperature)
