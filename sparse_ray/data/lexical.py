"""BM25 over code tokens as hashed term vectors, so a teacher can score any query against any document.

BM25 (bm25s' ``lucene`` variant, k1 1.5, b 0.75) factorises into a dot product:

    score(q, d) = sum_{t in q} idf(t) · tf(t, d) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))

so a query is the vector ``idf(t)`` per token occurrence and a document the vector of its
saturated term frequencies. Terms are code tokens (identifiers split on snake_case and camelCase,
:func:`code_tokens`) hashed into ``2**HASH_BITS`` buckets (CRC-32, stable across processes);
document frequencies and the mean document length come from a sample of the training documents
(:meth:`LexicalStats.fit`).

Data contract of :meth:`LexicalStats.terms`: a float32 array of ``WIDTH = 4 · TERMS``: each
slot's bucket id as three base-128 digits (``TERMS`` high digits, then middle, then low), then
the ``TERMS`` weights; a text with more distinct terms keeps the ``TERMS`` that weigh most in a
score (weight × idf); unused slots have digits −1 and weight 0. Digits below 128 are exact even
in bfloat16 (DeepSpeed's trainer casts every floating input, the teacher's ``label`` included,
to the engine's dtype), so the vectors travel in the teacher's ``label`` beside its dense
embeddings (``data/teacher.py``) and the loss scores them with :func:`scores` (``worker/distill.py``).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

_IDENT = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_STOP = frozenset("the a an of to and or in is for on be by with this that it as are if self return def".split())

#: Buckets of the term hash: 2**20 (collisions between a query's and a document's terms ~1e-4).
HASH_BITS = 20
#: Term slots per text, and the floats they take (three id digits and a weight each).
TERMS = 128
WIDTH = 4 * TERMS
_DIGIT = 128
K1, B = 1.5, 0.75


def code_tokens(text: str) -> list[str]:
    """Code-aware BM25 tokens: identifiers split on snake_case and camelCase, lower-cased."""
    out = []
    for word in _IDENT.findall(text):
        parts = _CAMEL.findall(word) or [word]
        out.extend(p.lower() for p in parts if p.lower() not in _STOP and len(p) > 1)
    return out


def bucket(token: str) -> int:
    """The token's hash bucket (the same in every process)."""
    return zlib.crc32(token.encode("utf-8")) & ((1 << HASH_BITS) - 1)


@dataclass(frozen=True)
class LexicalStats:
    """Document frequencies (sorted bucket ids and counts), the document count and mean length."""

    buckets: np.ndarray
    counts: np.ndarray
    documents: int
    mean_length: float

    @classmethod
    def fit(cls, documents: Iterable[str]) -> LexicalStats:
        """Statistics of ``documents`` (distinct texts count once each); ``ValueError`` if none."""
        df: Counter[int] = Counter()
        lengths = []
        for text in dict.fromkeys(documents):
            tokens = code_tokens(text)
            lengths.append(len(tokens))
            df.update({bucket(t) for t in tokens})
        if not lengths:
            raise ValueError("BM25 statistics need at least one document")
        ids = np.array(sorted(df), dtype=np.int64)
        counts = np.array([df[i] for i in ids], dtype=np.int64)
        return cls(ids, counts, len(lengths), max(sum(lengths) / len(lengths), 1.0))

    def idf(self, ids: np.ndarray) -> np.ndarray:
        """bm25s' lucene idf, ``log(1 + (N − df + 0.5) / (df + 0.5))``, of each bucket id."""
        if not len(self.buckets):  # sampled documents without a single code token
            return np.log1p((self.documents + 0.5) / 0.5) * np.ones(len(ids))
        at = np.minimum(np.searchsorted(self.buckets, ids), len(self.buckets) - 1)
        df = np.where(self.buckets[at] == ids, self.counts[at], 0)
        return np.log1p((self.documents - df + 0.5) / (df + 0.5))

    def terms(self, text: str, query: bool) -> np.ndarray:
        """The text's term vector (module contract): idf per occurrence for a query, saturated term
        frequency for a document. A query term no sampled document holds gets the idf of df 0."""
        tokens = Counter(bucket(t) for t in code_tokens(text))
        out = np.zeros(WIDTH, dtype=np.float32)
        out[: 3 * TERMS] = -1
        if not tokens:
            return out
        ids = np.fromiter(tokens, dtype=np.int64)
        tf = np.fromiter(tokens.values(), dtype=np.float64)
        idf = self.idf(ids)
        if query:
            weights = idf * tf
        else:
            norm = K1 * (1 - B + B * tf.sum() / self.mean_length)
            weights = tf / (tf + norm)
        keep = np.argsort(-(weights if query else weights * idf), kind="stable")[:TERMS]  # heaviest contributions
        n, kept = len(keep), ids[keep]
        for digit in range(3):
            out[digit * TERMS : digit * TERMS + n] = (kept // _DIGIT ** (2 - digit)) % _DIGIT
        out[3 * TERMS : 3 * TERMS + n] = weights[keep]
        return out

    def term_matrix(self, texts: Iterable[str], query: bool) -> torch.Tensor:
        """The term vectors of ``texts``, one row each, for :func:`scores`."""
        return torch.from_numpy(np.stack([self.terms(text, query) for text in texts]))


def _ids(vectors: torch.Tensor) -> torch.Tensor:
    """Bucket ids of term vectors ``(n, WIDTH)`` (−1 for unused slots), ``(n, TERMS)``."""
    digits = vectors[:, : 3 * TERMS].float().round().long().view(-1, 3, TERMS)
    ids = (digits[:, 0] * _DIGIT + digits[:, 1]) * _DIGIT + digits[:, 2]
    return ids.masked_fill(digits[:, 0] < 0, -1)


def scores(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """BM25 of every query against every document from their term vectors ``(n, WIDTH)`` and
    ``(m, WIDTH)`` (queries' weights already include idf): ``(n, m)``, float32."""
    q_ids, d_ids = _ids(queries), _ids(documents)
    q_w, d_w = queries[:, 3 * TERMS :].float() * (q_ids >= 0), documents[:, 3 * TERMS :].float() * (d_ids >= 0)
    vocab, inverse = torch.unique(torch.cat([q_ids.flatten(), d_ids.flatten()]), return_inverse=True)
    q_cols, d_cols = inverse[: q_ids.numel()].view_as(q_ids), inverse[q_ids.numel() :].view_as(d_ids)
    q_dense = q_w.new_zeros(q_ids.shape[0], len(vocab)).scatter_add_(1, q_cols, q_w)
    d_dense = d_w.new_zeros(d_ids.shape[0], len(vocab)).scatter_add_(1, d_cols, d_w)
    return q_dense @ d_dense.T
