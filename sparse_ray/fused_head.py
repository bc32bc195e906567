"""A fused SPLADE head: ``max`` pooling of ``log1p(relu(H·Wᵀ + b))`` over the sequence without the
batch × sequence × vocabulary logits.

``log1p∘relu`` is monotone, so ``w_v = f(max_l logit_{l,v})``: :class:`MaskedMaxLogits` computes the
masked max over positions chunk by chunk over the vocabulary (peak extra memory: one batch ×
sequence × chunk block plus batch × vocabulary) and keeps the winning position of every
(text, vocabulary entry). Its backward routes each gradient to that one position and only for the
pairs whose gradient is non-zero (``f`` is flat below 0, so inactive dimensions cost nothing):
decoder weight, bias and hidden-state gradients from gathered rows, never a vocabulary-wide tensor
per token. The activation is applied outside, with ordinary autograd.

:func:`use_fused_head` switches a SparseEncoder's fill-mask ``Transformer`` + ``SpladePooling`` to
it by instance attributes only: the modules, their weights and their saved layout stay
sentence-transformers' own (a saved model loads without sparse-ray).

Under ZeRO-3 the fused forward reads ``decoder.weight`` (tied to the input embeddings) outside the
decoder's own forward. Nothing extra is needed: during an engine forward DeepSpeed marks every
module ``_in_forward`` and its ``ZeROOrderedDict`` gathers a partitioned parameter on attribute
access and registers it as an external parameter of the running module (``parameter_offload.py``),
so forward and backward see the full weight (``tests/driver/test_equivalence.py``, ZeRO-3).
"""

from __future__ import annotations

from typing import Any

import torch

from sparse_ray.model import splade_stacks

#: Vocabulary entries per chunk of the forward (a batch × seq × chunk block of logits at a time).
CHUNK = 4096
#: (text, vocabulary entry) pairs per chunk of the backward's gathers.
PAIRS = 1 << 16


class MaskedMaxLogits(torch.autograd.Function):
    """``max_l (H[b,l]·W[v] + bias[v])`` over unmasked positions l → (batch, vocab)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> Any:
        batch, vocab = hidden.shape[0], weight.shape[0]
        best = hidden.new_empty((batch, vocab))
        where = torch.empty((batch, vocab), dtype=torch.long, device=hidden.device)
        pad = ~mask.bool().unsqueeze(-1)
        with torch.no_grad():
            for start in range(0, vocab, CHUNK):
                end = min(start + CHUNK, vocab)
                logits = torch.matmul(hidden, weight[start:end].T) + bias[start:end]
                logits.masked_fill_(pad, float("-inf"))
                best[:, start:end], where[:, start:end] = logits.max(dim=1)
        ctx.save_for_backward(hidden, weight, where)
        ctx.mark_non_differentiable(where)
        return best

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        hidden, weight, where = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight)
        grad_bias = grad.sum(dim=0).to(weight.dtype)  # each (text, entry) pair has one winning position
        rows, cols = grad.nonzero(as_tuple=True)
        for start in range(0, rows.numel(), PAIRS):
            b, v = rows[start : start + PAIRS], cols[start : start + PAIRS]
            g = grad[b, v].unsqueeze(1)
            pos = where[b, v]
            grad_weight.index_add_(0, v, (g * hidden[b, pos]).to(grad_weight.dtype))
            grad_hidden.index_put_((b, pos), (g * weight[v]).to(grad_hidden.dtype), accumulate=True)
        return grad_hidden, grad_weight, grad_bias, None


def fused_splade(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor, activation: str = "relu"
) -> torch.Tensor:
    """SPLADE max-pooled weights (batch, vocab) of ``SpladePooling(pooling_strategy="max")``."""
    weights = torch.log1p(torch.relu(MaskedMaxLogits.apply(hidden, weight, bias, mask)))
    return torch.log1p(weights) if activation == "log1p_relu" else weights


def _bert_parts(mlm: Any) -> tuple[Any, Any, Any] | None:
    """(encoder, hidden→hidden transform, decoder) of a BERT-family masked LM, or None."""
    if hasattr(mlm, "bert") and hasattr(mlm, "cls"):
        return mlm.bert, mlm.cls.predictions.transform, mlm.cls.predictions.decoder
    return None


def use_fused_head(model: Any) -> str | None:
    """Route ``model``'s SPLADE stacks through :func:`fused_splade`; returns why not, or None.

    Supported: BERT-family fill-mask Transformers followed by ``SpladePooling(max)`` (``relu`` or
    ``log1p_relu``), alone or as the document side of a Router. Other heads keep the stock path.
    """
    stacks = [(t, p) for t, p in splade_stacks(model) if p.pooling_strategy == "max"]
    if not stacks:
        return "no fill-mask Transformer + SpladePooling(max) stack"
    for transformer, pooling in stacks:
        parts = _bert_parts(transformer.model)
        if parts is None:
            return f"{type(transformer.model).__name__} is not a BERT-family masked LM"
        _patch(transformer, pooling, parts)
    return None


def _patch(transformer: Any, pooling: Any, parts: tuple[Any, Any, Any]) -> None:
    encoder, transform, decoder = parts
    stock_pooling = pooling.forward

    def fused_forward(features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
        hidden = transform(encoder(**inputs, return_dict=True).last_hidden_state)
        activation = pooling.activation_function
        features["sentence_embedding"] = fused_splade(
            hidden, decoder.weight, decoder.bias, features["attention_mask"], activation
        )
        return features

    def pooled_already(features: dict[str, Any]) -> dict[str, Any]:
        return features if "sentence_embedding" in features else stock_pooling(features)

    transformer.forward = fused_forward
    pooling.forward = pooled_already
    if pooling.embedding_dimension is None:  # the stock pooling learns it from its first output
        pooling.embedding_dimension = decoder.weight.shape[0]
