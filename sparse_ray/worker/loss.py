"""The training objective: SparseMultipleNegativesRankingLoss inside SpladeLoss (FLOPS regularisers)."""

from __future__ import annotations

from typing import Any

from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

from sparse_ray.config import TrainConfig


def build_loss(model: Any, train: TrainConfig, model_type: str, world: int) -> SpladeLoss:
    """Ranking loss with in-batch negatives (gathered across ranks when ``world > 1``) plus the
    query and document FLOPS regularisers (the query one is off for inference-free models)."""
    ranking = SparseMultipleNegativesRankingLoss(model, scale=train.similarity_scale, gather_across_devices=world > 1)
    query_weight = 0.0 if model_type == "inference_free_splade" else train.query_regularizer_weight
    return SpladeLoss(
        model,
        ranking,
        document_regularizer_weight=train.document_regularizer_weight,
        query_regularizer_weight=query_weight,
    )
