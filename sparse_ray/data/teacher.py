"""A distillation teacher inside the Ray Data pipeline: a bi-encoder embeds every text of a row.

Input contract: pyarrow batches of training rows (``anchor, positive, negative_1..k, language``,
``data/pipeline.py``). Output: the same rows plus ``label``, a list of ``(2 + k) × dim`` float32:
the teacher's L2-normalised embeddings of the anchor, the positive and each negative, in that
order, flattened. With BM25 statistics (``train.teacher_lexical_weight`` > 0) each text's
embedding is followed by its BM25 term vector (``data/lexical.py``: the anchor as a query, the
others as documents), so each text takes ``dim + lexical.WIDTH`` floats. A pure function of
the row, so Ray's ordered splits and the data slots see the same rows with the same labels
whatever the worker count.

Carrying embeddings rather than scores is what lets the loss build the teacher's *global*
in-batch score matrix (every anchor against every worker's candidates, ``worker/distill.py``);
the row's own candidate scores (``kl``, ``margin_mse``) follow from the same vectors.

:class:`TeacherEmbedder` is the ``map_batches`` callable of an actor pool (one model per actor,
``train.teacher_replicas`` actors; a GPU each on GPU clusters). With ``bf16`` it encodes under
bf16 autocast (the run's ``cluster.bf16``): on a CPU with AMX about twice the rows/s, embeddings
within 1e-4 cosine of float32 (results, 2026-12-06); the label stays float32.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import pyarrow as pa

from sparse_ray.data.lexical import LexicalStats

#: Rows per ``map_batches`` call of the teacher (its own encode batch is ``ENCODE_BATCH`` texts).
TEACHER_BATCH_ROWS = 64
ENCODE_BATCH = 64


class TeacherEmbedder:
    """``map_batches`` callable: adds ``label`` (see the module contract) to every row."""

    def __init__(
        self,
        model: str,
        text_columns: tuple[str, ...],
        device: str = "cpu",
        threads: int = 0,
        lexical: LexicalStats | None = None,
        max_seq_length: int = 0,
        split_identifiers: bool = False,
        bf16: bool = False,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from sparse_ray.model import split_identifiers_in
        from sparse_ray.offline import load_kwargs

        if threads:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(model, device=device, **load_kwargs(model))
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        if split_identifiers:  # the student's code-aware tokenizer (model.split_identifiers)
            split_identifiers_in(self.model[0])
        self.path = model
        self.split_identifiers = split_identifiers
        self.columns = text_columns
        self.lexical = lexical
        self.bf16 = bf16 and (not device.startswith("cuda") or torch.cuda.is_bf16_supported())

    def _precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the model's device when asked, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.model.device.type, dtype=torch.bfloat16)

    def __call__(self, batch: pa.Table) -> pa.Table:
        width = len(self.columns)
        texts = [text for col in self.columns for text in batch[col].to_pylist()]
        with self._precision():
            vectors = self.model.encode(
                texts,
                batch_size=ENCODE_BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = vectors.astype(np.float32)
        rows = batch.num_rows
        if self.lexical is not None:
            terms = [self.lexical.terms(text, query=i < rows) for i, text in enumerate(texts)]
            vectors = np.concatenate([vectors, np.stack(terms)], axis=1)
        # (columns × rows, width) → (rows, columns × width): anchor, positive, negatives of each row
        flat = vectors.reshape(width, rows, -1).transpose(1, 0, 2).reshape(rows, -1)
        label = pa.array(list(flat), type=pa.list_(pa.float32()))
        return batch.append_column("label", label)


def with_teacher(
    ds: Any,
    model: str,
    text_columns: tuple[str, ...],
    replicas: int,
    cpus: float,
    gpu: bool,
    lexical: LexicalStats | None = None,
    max_seq_length: int = 0,
    split_identifiers: bool = False,
    bf16: bool = False,
) -> Any:
    """``ds`` with the teacher's ``label`` column, computed by ``replicas`` actors of ``model``
    reading ``max_seq_length`` tokens (0: its own limit), identifiers split if
    ``split_identifiers``, in bf16 autocast if ``bf16``, with BM25 term vectors from ``lexical``."""
    import ray.data

    # A map task hands on its rows only when its whole input block is done: cut the read blocks
    # (hundreds of rows, minutes of teacher time on a CPU) to one teacher batch each, so labelled
    # rows reach the workers a batch at a time (a streaming repartition: order kept).
    ds = ds.repartition(target_num_rows_per_block=TEACHER_BATCH_ROWS)
    return ds.map_batches(
        TeacherEmbedder,
        fn_constructor_kwargs={
            "model": model,
            "text_columns": text_columns,
            "device": "cuda" if gpu else "cpu",
            "threads": 0 if gpu else max(1, int(cpus)),
            "lexical": lexical,
            "max_seq_length": max_seq_length,
            "split_identifiers": split_identifiers,
            "bf16": bf16,
        },
        batch_size=TEACHER_BATCH_ROWS,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=cpus,
        num_gpus=1 if gpu else 0,
    )


def load(
    model: str,
    text_columns: tuple[str, ...],
    max_seq_length: int = 0,
    split_identifiers: bool = False,
    bf16: bool = False,
) -> TeacherEmbedder:
    """The teacher on this process's CPU; ``ValueError`` with one line if it cannot be loaded as a
    SentenceTransformer with a fixed embedding width (and, if asked, a fast tokenizer to split with)."""
    try:
        embedder = TeacherEmbedder(
            model, text_columns, max_seq_length=max_seq_length, split_identifiers=split_identifiers, bf16=bf16
        )
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's path or id
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"train.teacher {model!r} cannot be loaded as a SentenceTransformer: {first}") from None
    if not embedder.model.get_embedding_dimension():
        raise ValueError(f"train.teacher {model!r} has no fixed embedding dimension")
    return embedder


def rows_per_second(embedder: TeacherEmbedder, rows: list[dict[str, Any]]) -> float:
    """The teacher's rows/s over ``rows`` on this process's CPU (after one warm-up call)."""
    table = pa.Table.from_pylist([{c: r[c] for c in embedder.columns} for r in rows])
    embedder(table.slice(0, 2))
    started = time.perf_counter()
    embedder(table)
    return len(rows) / max(time.perf_counter() - started, 1e-9)
