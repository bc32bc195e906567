"""The training objective, the same whatever the worker count: ranking loss + FLOPS regularisers.

Contract: :func:`build_loss` returns a ``SpladeLoss`` (so sentence-transformers' regulariser
weight scheduler drives it) whose value and gradients on N ranks × b rows equal, after DDP's or
DeepSpeed's gradient averaging, those of one process on the N·b rows (``tests/worker/test_objective.py``).

- **Global FLOPS** (``train.regularizer_scope=global``): the FLOPS regulariser
  ``sum_j mean_i(e_ij)^2`` is taken over the *global* batch. Each rank all-gathers the per-rank
  column sums (and row counts) with a differentiable all-gather whose backward sums the gradient
  over ranks; every rank computes the same value, so rank r's gradient is N × its share, and the
  average over N ranks that DDP and ZeRO apply gives exactly the single-process gradient.
  ``local`` is sentence-transformers' per-device mean (regularisation then depends on N).
- **Cross-rank false negatives**: a candidate anywhere in the gathered batch whose text is
  identical to an anchor's own positive is masked out of that anchor's softmax (compared by a
  stable 62-bit hash of the tokenised text, gathered with the embeddings), on every rank; counted
  in ``counts["masked_duplicates"]``.
- The ranking loss is sentence-transformers' ``SparseMultipleNegativesRankingLoss`` arithmetic
  (query→document direction, joint softmax, no hardness term), proven equal to it when nothing is masked.
- ``train.loss`` adds (or, alone, replaces it with) a distillation term from a teacher's
  ``label`` column (``worker/distill.py``), also worker-count invariant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed.nn  # the differentiable all-gather of GlobalFlopsLoss
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sparse_encoder.losses import FlopsLoss, SparseMultipleNegativesRankingLoss, SpladeLoss
from sentence_transformers.sparse_encoder.losses.cached_splade import _reconstruct_loss_components
from sentence_transformers.util.distributed import all_gather, all_gather_with_grad, get_rank, get_world_size

from sparse_ray.config import TrainConfig
from sparse_ray.worker import distill

#: Two Mersenne-prime moduli for the text hash (one 62-bit key per text).
_MODULI = (2**31 - 1, 2**31 - 19)
_BASES = (1_000_003, 998_244_353)


class GlobalFlopsLoss(FlopsLoss):
    """FLOPS over the global batch (see the module docstring); per device where not distributed."""

    def compute_loss_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        if get_world_size() == 1:
            return super().compute_loss_from_embeddings(embeddings)
        if self.threshold is not None:  # the threshold variant masks whole rows, as the stock loss does
            active = (embeddings != 0).sum(dim=1) > self.threshold
            embeddings = embeddings * active.float().unsqueeze(1)
        rows = embeddings.new_full((1,), float(embeddings.shape[0]))
        local = torch.cat([embeddings.sum(dim=0), rows])
        total = torch.stack(torch.distributed.nn.functional.all_gather(local)).sum(dim=0)
        return torch.sum((total[:-1] / total[-1]) ** 2)


def text_keys(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """One int64 key per text of a tokenised column: equal token ids (after truncation) give equal keys."""
    ids, mask = features["input_ids"].long(), features["attention_mask"].long()
    ids = (ids + 1) * mask  # padding contributes nothing; token 0 still counts
    positions = torch.arange(ids.shape[1], device=ids.device)
    key = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    for modulus, base in zip(_MODULI, _BASES, strict=True):
        powers = torch.tensor([pow(base, int(p), modulus) for p in positions.tolist()], device=ids.device)
        part = ((ids % modulus) * powers % modulus).sum(dim=1) % modulus
        key = key * (1 << 31) + part
    return key


def global_scores(
    queries: torch.Tensor,
    docs: list[torch.Tensor],
    scale: float,
    keys: list[torch.Tensor] | None = None,
    counts: Counter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scores of this rank's anchors against every rank's candidates, with the false-negative mask.

    ``docs[0]`` are the positives, ``docs[1:]`` the hard negatives (rows aligned with ``queries``);
    ``keys`` (optional) holds one text key per row of each document column. Returns the scores
    ``(b, (1 + k) · N·b)`` (masked entries ``-inf``), the column of each anchor's own positive, and
    the mask (None without keys).
    """
    batch = queries.shape[0]
    offset = 0
    if get_world_size() > 1:
        queries = all_gather_with_grad(queries)
        docs = [all_gather_with_grad(d) for d in docs]
        keys = None if keys is None else [all_gather(k) for k in keys]
        offset = get_rank() * batch
    rows = torch.arange(batch, device=queries.device)
    own = rows + offset
    scores = queries[own] @ torch.cat(docs, dim=0).T * scale
    clash = None
    if keys is not None:
        clash = torch.cat(keys).unsqueeze(0) == keys[0][own].unsqueeze(1)
        clash[rows, own] = False  # the anchor's own positive stays
        if counts is not None:
            counts["masked_duplicates"] += int(clash.sum())
        scores = scores.masked_fill(clash, float("-inf"))
    return scores, own, clash


def cross_entropy(scores: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """In-batch-negatives cross-entropy: each anchor's own positive against all its scores."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    return -(scores[rows, own] - torch.logsumexp(scores, dim=1)).mean()


def ranking_loss(
    queries: torch.Tensor,
    docs: list[torch.Tensor],
    scale: float,
    keys: list[torch.Tensor] | None = None,
    counts: Counter | None = None,
) -> torch.Tensor:
    """In-batch-negatives cross-entropy of this rank's anchors against every rank's candidates
    (arguments as :func:`global_scores`)."""
    scores, own, _ = global_scores(queries, docs, scale, keys, counts)
    return cross_entropy(scores, own)


class SpladeObjective(SpladeLoss):
    """``SpladeLoss`` with the worker-count-invariant ranking or distillation loss and regularisers
    (module docstring; the distillation terms: ``worker/distill.py``)."""

    def __init__(
        self, model: Any, ranking: SparseMultipleNegativesRankingLoss, counts: Counter, train: TrainConfig, **kw: Any
    ) -> None:
        super().__init__(model, ranking, **kw)
        self.counts = counts
        self.train = train

    def forward(
        self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        features = list(sentence_features)
        embeddings = embed_columns(self.model, features, separate_first=True)
        return self.objective(embeddings, [text_keys(f) for f in features[1:]], labels)

    def objective(
        self, embeddings: list[torch.Tensor], keys: list[torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The loss parts from the columns' embeddings (anchor first) and the documents' text keys."""
        queries, docs = embeddings[0], embeddings[1:]
        scores, own, clash = global_scores(queries, docs, self.loss.scale, keys, self.counts)
        losses = {}
        if self.train.loss == "mnrl" or self.train.loss.startswith("mnrl+"):
            losses["base_loss"] = cross_entropy(scores, own)
        if self.train.distill_loss:
            assert labels is not None, "a distillation loss is trained on rows with a teacher label"
            term = self._distill(queries, docs, labels, scores, own, clash)
            losses["distill_loss"] = self.train.distill_weight * term
        document = self.document_regularizer.compute_loss_from_embeddings(torch.cat(docs))
        losses["document_regularizer_loss"] = document * self.document_regularizer_weight
        if self.query_regularizer_weight is not None:
            query = self.query_regularizer.compute_loss_from_embeddings(queries)
            losses["query_regularizer_loss"] = query * self.query_regularizer_weight
        return losses

    def _distill(
        self,
        queries: torch.Tensor,
        docs: list[torch.Tensor],
        labels: torch.Tensor,
        scores: torch.Tensor,
        own: torch.Tensor,
        clash: torch.Tensor | None,
    ) -> torch.Tensor:
        """The distillation term (``train.distill_loss``) of this rank's rows."""
        if self.train.distill_loss != "inbatch_kl":
            return distill.candidate_term(queries, docs, labels, self.train)
        teacher = distill.teacher_matrix(labels, len(docs), own, get_world_size(), self.train)
        teacher = teacher * self.train.teacher_scale
        if clash is not None:
            teacher = teacher.masked_fill(clash, float("-inf"))
        return distill.softmax_kl(scores, teacher, self.train.distill_temperature)


class CachedSpladeObjective(CachedLossMixin, SpladeObjective):
    """:class:`SpladeObjective` with GradCache (``train.mini_batch_size``): columns are embedded
    in mini-batches, first without gradients, the whole objective (gathers, masks, global FLOPS,
    distillation) is back-propagated to the embeddings, and each mini-batch is embedded again
    with gradients to carry the cached ones into the model. Same value and gradients as
    :class:`SpladeObjective` on the same batch; the per-device batch is bounded by time, not memory."""

    def __init__(self, *args: Any, mini_batch_size: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = None
        self.show_progress_bar = False
        self._parts: dict[str, float] = {}
        self._keys: list[torch.Tensor] = []

    def forward(
        self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        features = list(sentence_features)
        self._keys = [text_keys(f) for f in features[1:]]
        total = self.forward_cached(features, labels)
        parts = {key: torch.tensor(value, device=total.device) for key, value in self._parts.items()}
        return _reconstruct_loss_components(total, parts)

    def calculate_loss(
        self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *, with_backward: bool = False
    ) -> torch.Tensor:
        """GradCache step 2: the whole objective from the mini-batches' embeddings."""
        parts = self.objective([torch.cat(r) for r in reps], self._keys, labels)
        self._parts = {key: float(value.detach()) for key, value in parts.items()}
        total = sum(parts.values())
        if with_backward:
            total.backward()
            total = total.detach()
        return total


def build_loss(
    model: Any, train: TrainConfig, model_type: str, world: int, counts: Counter | None = None
) -> SpladeLoss:
    """The objective of ``train`` (``train.regularizer_scope``); the query regulariser is off for
    inference-free models. ``world`` > 1 gathers candidates (and, for ``global``, FLOPS) across ranks."""
    ranking = SparseMultipleNegativesRankingLoss(model, scale=train.similarity_scale, gather_across_devices=world > 1)
    query_weight = 0.0 if model_type == "inference_free_splade" else train.query_regularizer_weight
    weights = {
        "document_regularizer_weight": train.document_regularizer_weight,
        "query_regularizer_weight": query_weight,
    }
    if train.regularizer_scope == "local":
        return SpladeLoss(model, ranking, **weights)
    regularizers = {"document_regularizer": GlobalFlopsLoss(model), "query_regularizer": GlobalFlopsLoss(model)}
    counts = Counter() if counts is None else counts
    if train.mini_batch_size:
        return CachedSpladeObjective(
            model, ranking, counts, train, mini_batch_size=train.mini_batch_size, **weights, **regularizers
        )
    return SpladeObjective(model, ranking, counts, train, **weights, **regularizers)
