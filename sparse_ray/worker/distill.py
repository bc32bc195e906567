"""Distillation terms of the objective: the student's scores matched to a teacher's.

Data contract (the ``label`` column, ``data/pipeline.py``): per row either the teacher's scores of
the row's candidates, shape ``(1 + k)`` (positive first: ``train.teacher=data``), or the teacher's
L2-normalised embeddings of anchor, positive and negatives, ``(2 + k) × dim`` flattened (a teacher
model, ``data/teacher.py``). Teacher similarities are multiplied by ``train.teacher_scale``.

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


def row_scores(queries: torch.Tensor, docs: list[torch.Tensor]) -> torch.Tensor:
    """Each anchor's dot product with its own candidates, ``(b, 1 + k)``."""
    return torch.stack([(queries * d).sum(dim=1) for d in docs], dim=1)


def teacher_row_scores(labels: torch.Tensor, train: TrainConfig, candidates: int) -> torch.Tensor:
    """The teacher's scaled scores of each row's ``candidates`` (positive first), ``(b, candidates)``."""
    if train.teacher == "data":
        assert labels.shape[1] == candidates, "the data's scores: one per candidate"
        return labels.float() * train.teacher_scale
    vectors = labels.float().view(labels.shape[0], candidates + 1, -1)
    return row_scores(vectors[:, 0], list(vectors[:, 1:].unbind(dim=1))) * train.teacher_scale


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


def teacher_matrix(labels: torch.Tensor, candidates: int, own: torch.Tensor, world: int) -> torch.Tensor:
    """The teacher's score matrix of this rank's anchors against every rank's candidates, in the
    order the ranking loss concatenates them (column by column, each column rank by rank)."""
    vectors = labels.float().view(labels.shape[0], candidates + 1, -1)
    if world > 1:
        vectors = all_gather(vectors)
    queries = vectors[:, 0]
    docs = vectors[:, 1:].transpose(0, 1).reshape(-1, vectors.shape[-1])
    return queries[own] @ docs.T


def candidate_term(
    queries: torch.Tensor, docs: list[torch.Tensor], labels: torch.Tensor, train: TrainConfig
) -> torch.Tensor:
    """The ``margin_mse`` or ``kl`` term on each row's own candidates."""
    student = row_scores(queries, docs)
    teacher = teacher_row_scores(labels, train, len(docs))
    if train.distill_loss == "margin_mse":
        return margin_mse(student, teacher)
    return softmax_kl(student, teacher, train.distill_temperature)
