"""Document windows: a document longer than the model's ``max_seq_length`` read as several windows.

A SPLADE stack reads the first ``max_seq_length`` tokens of a text and drops the rest: the tail
of a long function never reaches the index. With ``count`` windows, the document side tokenizes
each text into up to ``count`` consecutive windows of ``max_seq_length`` tokens (the tokenizer's
own overflow, special tokens in every window), encodes every window as usual, and keeps per
vocabulary entry the largest weight over the windows, every window after the first scaled by
``tail_weight`` first. SPLADE's max pooling over one window's tokens becomes max pooling over the
whole text, with attention limited to a window and the start of the function (its signature and
names) counted in full.

Data contract: queries are never windowed (``task="query"`` batches pass through as they were);
only ``task="document"`` batches of a SPLADE document stack are, in plain and inference-free
models alike. The setting is saved beside the model as :data:`FILE` and applied by sparse-ray's
loaders (:func:`sparse_ray.model.load_sparse_encoder`, evaluation, indexing, serving); a stock
``SparseEncoder(path)`` ignores the file and reads the first window, as training did.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from sparse_ray.errors import ConfigError

#: The file beside a saved model that holds its :class:`DocumentWindows` (absent: one window).
FILE = "document_windows.json"


@dataclass(frozen=True)
class DocumentWindows:
    """How a model encodes documents longer than its ``max_seq_length``."""

    count: int = 1
    """Windows of ``max_seq_length`` tokens read per document; 1 reads the first only (stock)."""
    tail_weight: float = 0.3
    """Scale of every window after the first before the elementwise max; 1 is a plain max over
    windows, which favours long documents (more windows, more chances at every term)."""

    def __post_init__(self) -> None:
        check_windows(self.count, self.tail_weight, "document windows: count", "document windows: tail_weight")

    @classmethod
    def of(cls, model: Any) -> DocumentWindows:
        """The windows a config's ``model`` section asks for (``document_windows``, ``document_window_weight``)."""
        return cls(model.document_windows, model.document_window_weight)


def check_windows(count: Any, tail_weight: Any, count_name: str, weight_name: str) -> None:
    """``ConfigError`` in one line, naming the setting, for a count below 1 or a weight outside (0, 1]."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{count_name} must be an integer >= 1, got {count!r}")
    if isinstance(tail_weight, bool) or not isinstance(tail_weight, (int, float)) or not 0.0 < tail_weight <= 1.0:
        raise ConfigError(f"{weight_name} must be in (0, 1], got {tail_weight!r}")


def read(model_dir: str) -> DocumentWindows:
    """The windows saved beside the model at ``model_dir`` (one window when there is no file)."""
    path = os.path.join(model_dir, FILE)
    if not os.path.isfile(path):
        return DocumentWindows()
    try:
        with open(path) as fh:
            saved = json.load(fh)
        return DocumentWindows(int(saved["count"]), float(saved["tail_weight"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a document-windows file: {exc}") from None


def use_saved_windows(model: Any, model_dir: str) -> None:
    """:func:`use_document_windows` with the windows saved beside a local model (none for a hub id)."""
    if os.path.isdir(model_dir):
        use_document_windows(model, read(model_dir))


def write(model_dir: str, windows: DocumentWindows) -> None:
    """Save ``windows`` beside the model at ``model_dir``; one window writes nothing (stock model)."""
    if windows.count > 1:
        with open(os.path.join(model_dir, FILE), "w") as fh:
            json.dump(asdict(windows), fh, indent=2)


def use_document_windows(model: Any, windows: DocumentWindows) -> int:
    """Make every SPLADE document stack of ``model`` read ``windows``; returns how many stacks.

    By an instance attribute and a forward hook only, like the fused head (and composed with it):
    the modules and their saved layout stay sentence-transformers' own. Call it once per model.
    """
    from sparse_ray.model import splade_stacks

    if windows.count == 1:
        return 0
    stacks = splade_stacks(model)
    for transformer, pooling in stacks:
        transformer.preprocess = _windowed_preprocess(transformer.preprocess, windows)
        pooling.register_forward_hook(_pool_windows)
    return len(stacks)


def _windowed_preprocess(stock: Any, windows: DocumentWindows) -> Any:
    def preprocess(inputs: Any, prompt: str | None = None, processing_kwargs: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("task") != "document":
            return stock(inputs, prompt=prompt, processing_kwargs=processing_kwargs, **kwargs)
        given = dict(processing_kwargs or {})
        given["text"] = {**given.get("text", {}), "return_overflowing_tokens": True}
        features = stock(inputs, prompt=prompt, processing_kwargs=given, **kwargs)
        owner = features.pop("overflow_to_sample_mapping", None)
        if owner is None:  # not a padded text batch: nothing was split
            return features
        return window_features(features, owner, windows)

    return preprocess


def window_features(features: dict[str, Any], owner: Any, windows: DocumentWindows) -> dict[str, Any]:
    """Keep the first ``windows.count`` windows of every text (``owner[i]``: the text of window i,
    in order) and record each kept window's text (``window_of``) and scale (``window_scale``)."""
    import torch

    owner = torch.as_tensor(owner)
    first = torch.ones_like(owner, dtype=torch.bool)
    first[1:] = owner[1:] != owner[:-1]
    starts = torch.nonzero(first).squeeze(1)
    rank = torch.arange(len(owner)) - starts[torch.cumsum(first.long(), 0) - 1]
    keep = rank < windows.count
    for key, value in list(features.items()):
        if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == len(owner):
            features[key] = value[keep]
    features["window_of"] = owner[keep]
    features["window_scale"] = torch.where(rank[keep] == 0, 1.0, windows.tail_weight)
    return features


def _pool_windows(module: Any, args: Any, features: dict[str, Any]) -> dict[str, Any]:
    """Forward hook of a SPLADE pooling module: one vector per text, the max over its windows.

    A hook, not a wrapper, so it runs after whichever forward the module has (the fused head
    replaces ``forward`` too), whatever order the two are switched on in."""
    owner = features.pop("window_of", None)
    scale = features.pop("window_scale", None)
    if owner is None:
        return features
    weights = features["sentence_embedding"]
    scaled = weights * scale.to(weights.device, weights.dtype).unsqueeze(1)
    texts = int(owner.max()) + 1 if owner.numel() else 0
    index = owner.to(weights.device).unsqueeze(1).expand_as(scaled)
    # SPLADE weights are >= 0: a max that starts from zero is the max over the text's windows
    features["sentence_embedding"] = scaled.new_zeros((texts, scaled.shape[1])).scatter_reduce_(
        0, index, scaled, "amax"
    )
    return features
