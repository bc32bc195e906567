"""Sparse encoders: SPLADE and inference-free SPLADE built from a masked-language-model checkpoint.

- ``splade``: ``Transformer(fill-mask)`` → ``SpladePooling``; queries and documents share it.
- ``inference_free_splade``: a ``Router`` sends queries to a ``SparseStaticEmbedding`` (one learned
  weight per vocabulary token, no transformer at query time) and documents to the SPLADE stack.

A checkpoint without an MLM head (the bundled MiniLM) gets a freshly initialised head; the seed set
by the caller makes that identical on every worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sparse_ray.config import ModelConfig
from sparse_ray.errors import ConfigError

#: Parameter-name pattern of the query-side static embedding, for ``learning_rate_mapping``.
#: (sentence-transformers' documented ``SparseStaticEmbedding\.weight`` matches no parameter.)
STATIC_EMBEDDING_PATTERN = r"sub_modules\.query\.0\.weight"


def build_model(
    model_type: str,
    base: str,
    max_seq_length: int,
    pooling: str = "max",
    head_init: str = "auto",
    head_bias: float = -6.0,
    log: Callable[[str], None] | None = None,
    dropout: float | None = None,
    split_identifiers: bool = False,
) -> Any:
    """A new SparseEncoder of ``model_type`` on top of the checkpoint at ``base`` (path or hub id).

    ``head_init`` ``lexical`` (or ``auto`` for a local checkpoint without an MLM head) replaces a
    random MLM head by :func:`init_lexical_head`, and ``log`` (if given) says so in one line instead
    of transformers' load report, which lists exactly the head weights replaced here as MISSING;
    ``pretrained`` keeps whatever was loaded (and its load report). ``dropout`` (if given) sets
    every dropout probability of the encoder (:func:`set_dropout`); ``split_identifiers`` gives
    it the code-aware tokenizer of :func:`identifier_tokenizer`.
    """
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import (
        Router,
        SparseStaticEmbedding,
        SpladePooling,
        Transformer,
    )

    from sparse_ray.offline import load_kwargs

    lexical = head_init == "lexical" or (head_init == "auto" and lacks_mlm_head(base))
    with _quiet_transformers() if lexical else contextlib.nullcontext():
        offline = load_kwargs(base)  # a cached hub id while the hub is unreachable: the cache alone
        mlm = Transformer(
            base,
            transformer_task="fill-mask",
            max_seq_length=max_seq_length,
            model_kwargs=offline,
            processor_kwargs=offline,
            config_kwargs=offline,
        )
    if lexical:
        init_lexical_head(mlm.model, mlm.tokenizer.all_special_ids, head_bias)
        if log is not None:
            why = "no MLM head in the checkpoint" if head_init == "auto" else "model.head_init=lexical"
            log(f"{why}: lexical head initialised (bias {head_bias:g})")
    if dropout is not None:
        set_dropout(mlm.model, dropout)
    if split_identifiers:
        split_identifiers_in(mlm)
    splade = [mlm, SpladePooling(pooling_strategy=pooling)]
    # built on the CPU (said explicitly: no "using cpu" notice); the trainer moves it to its device
    if model_type == "splade":
        return SparseEncoder(modules=splade, similarity_fn_name="dot", device="cpu")
    assert model_type == "inference_free_splade", model_type
    static = SparseStaticEmbedding(tokenizer=mlm.tokenizer, frozen=False)
    router = Router.for_query_document(query_modules=[static], document_modules=splade)
    return SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")


#: Zero-width places inside code identifiers where a word starts: after a lower-case letter or a
#: digit before a capital (getUser, to2D), and before the last capital of an acronym that a word
#: follows (HTTPServer).
IDENTIFIER_BOUNDARY = r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])"


def identifier_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` (a fast one) with a space put at every :data:`IDENTIFIER_BOUNDARY` before its
    own normaliser runs; everything else (vocabulary, special tokens, lower-casing, length) as it was.

    Returned as the generic fast tokenizer, which saves and loads ``tokenizer.json`` as it is:
    transformers' ``BertTokenizer`` would rebuild its normaliser from its settings on load and lose
    the split."""
    from tokenizers import Regex, Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ConfigError(
            f"model.split_identifiers needs a fast (tokenizers) tokenizer; this base has {type(tokenizer).__name__}"
        )
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    split = normalizers.Replace(Regex(IDENTIFIER_BOUNDARY), " ")
    backend.normalizer = normalizers.Sequence([split, backend.normalizer] if backend.normalizer else [split])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=tokenizer.model_max_length, **tokenizer.special_tokens_map
    )


def split_identifiers_in(module: Any) -> None:
    """Give a sentence-transformers ``Transformer`` module (a student's or a teacher's) the
    code-aware tokenizer of :func:`identifier_tokenizer`; ``ConfigError`` in one line for a module
    whose processor is not a text tokenizer."""
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is None or getattr(module, "processor", None) is not tokenizer:
        raise ConfigError(f"splitting identifiers needs a text Transformer module, not {type(module).__name__}")
    module.processor = identifier_tokenizer(tokenizer)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings off while loading a checkpoint whose head is replaced anyway."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def splade_stacks(model: Any) -> list[tuple[Any, Any]]:
    """(Transformer, SpladePooling) pairs in module order, wherever they sit (plain or in a Router)."""
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    found, last = [], None
    for module in model.modules():
        if isinstance(module, Transformer):
            last = module
        elif isinstance(module, SpladePooling) and last is not None:
            found.append((last, module))
            last = None
    return found


def load_sparse_encoder(path: str, device: str = "cpu") -> Any:
    """A saved SparseEncoder, without transformers' per-load progress bar (one per replica otherwise),
    reading long documents in the windows saved beside it (``windows.py``; none saved: as trained)."""
    from sentence_transformers import SparseEncoder

    from sparse_ray.windows import use_saved_windows

    with quiet_load():
        model = SparseEncoder(path, device=device)
    use_saved_windows(model, path)
    return model


@contextlib.contextmanager
def quiet_load() -> Iterator[None]:
    """transformers' "Loading weights" progress bar and warnings off while a checkpoint loads."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with _quiet_transformers():
            yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def set_dropout(module: torch.nn.Module, p: float) -> None:
    """Every ``nn.Dropout`` of ``module`` to probability ``p``, and the config's dropout fields with
    it (so a saved and reloaded model trains the same way)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = p
    config = getattr(module, "config", None)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, p)


def model_from_config(model: ModelConfig, base: str, log: Callable[[str], None] | None = None) -> Any:
    """``build_model`` from the ``model`` section of a validated config."""
    m = model
    return build_model(
        m.type,
        base,
        m.max_seq_length,
        m.pooling,
        m.head_init,
        m.head_bias,
        log=log,
        dropout=m.dropout,
        split_identifiers=m.split_identifiers,
    )


def lacks_mlm_head(base: str) -> bool:
    """True for a local checkpoint whose weights have no trained MLM head (hub ids: False)."""
    from safetensors import safe_open

    files = sorted(Path(base).glob("*.safetensors")) if Path(base).is_dir() else []
    head_markers = ("predictions.transform", "lm_head", "vocab_transform")
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            if any(marker in key for key in fh.keys() for marker in head_markers):
                return False
    return bool(files)


def _head_parts(mlm: Any) -> tuple[Any, Any, Any]:
    """(hidden→hidden dense, layer norm, decoder) of a BERT, RoBERTa or DistilBERT MLM head."""
    if hasattr(mlm, "cls"):  # BERT family
        head = mlm.cls.predictions
        return head.transform.dense, head.transform.LayerNorm, head.decoder
    if hasattr(mlm, "lm_head"):  # RoBERTa family (CodeBERT)
        return mlm.lm_head.dense, mlm.lm_head.layer_norm, mlm.lm_head.decoder
    if hasattr(mlm, "vocab_transform"):  # DistilBERT
        return mlm.vocab_transform, mlm.vocab_layer_norm, mlm.vocab_projector
    raise ConfigError(f"lexical head init supports BERT, RoBERTa and DistilBERT heads, not {type(mlm).__name__}")


def init_lexical_head(mlm: Any, special_ids: list[int], bias: float) -> None:
    """Make a random MLM head lexical: identity transform, decoder tied to the input embeddings,
    a negative bias so few tokens fire, special tokens never.

    A random head starts dense (20K+ active dimensions of 30K) with losses in the thousands; this
    start scores each vocabulary token by how close the contextual state is to its input embedding,
    so a text activates its own tokens and near neighbours (measured in the README's results log).
    """
    dense, norm, decoder = _head_parts(mlm)
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
        dense.bias.zero_()
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        decoder.bias.fill_(bias)
        decoder.bias[special_ids] = -100.0


def router_mapping(model_type: str, cols: list[str]) -> dict[str, str]:
    """Column → route for inference-free models (the anchor is the query, the rest are documents)."""
    if model_type != "inference_free_splade":
        return {}
    return {col: ("query" if col == "anchor" else "document") for col in cols}


def make_tiny_base(out_dir: str, texts: list[str], vocab_size: int = 2000, hidden: int = 32) -> str:
    """Write a tiny BERT masked-LM with a WordPiece tokenizer trained on ``texts`` (tests, benchmarks).

    Real architecture and tokenizer, small enough that a training step takes milliseconds on a CPU.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
    )
    BertForMaskedLM(config).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir
