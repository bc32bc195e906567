"""The teacher in the data pipeline: each row's label is the teacher's normalised embeddings of its texts."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from conftest import sample_rows

from sparse_ray.data.teacher import TeacherEmbedder, load, rows_per_second

COLUMNS = ("anchor", "positive", "negative_1")


def _rows(n: int) -> list[dict]:
    return [
        {"anchor": r["query"], "positive": r["document"], "negative_1": r["negatives"][0], "language": "python"}
        for r in sample_rows(n)
    ]


def test_label_holds_anchor_positive_and_negatives_embeddings_in_order(tiny_base):
    from sentence_transformers import SentenceTransformer

    rows = _rows(5)
    out = TeacherEmbedder(tiny_base, COLUMNS)(pa.Table.from_pylist(rows))
    assert out.column_names == [*COLUMNS, "language", "label"]
    labels = np.array(out["label"].to_pylist(), dtype=np.float32).reshape(5, 3, -1)
    model = SentenceTransformer(tiny_base, device="cpu")
    for j, col in enumerate(COLUMNS):
        expected = model.encode([r[col] for r in rows], normalize_embeddings=True)
        np.testing.assert_allclose(labels[:, j], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(labels, axis=-1), 1.0, atol=1e-5)


def test_a_loaded_teacher_is_timed_and_a_bad_one_is_one_line(tiny_base, tmp_path):
    teacher = load(tiny_base, COLUMNS)
    assert teacher.model.get_embedding_dimension() == 32 and rows_per_second(teacher, _rows(8)) > 0
    with pytest.raises(ValueError) as err:
        load(str(tmp_path / "no-such-model"), COLUMNS)
    assert "cannot be loaded as a SentenceTransformer" in str(err.value) and "\n" not in str(err.value)


def test_a_hybrid_teacher_appends_each_texts_bm25_terms_to_its_embedding(tiny_base):
    from sparse_ray.data.lexical import WIDTH, LexicalStats

    rows = _rows(4)
    stats = LexicalStats.fit(r[c] for r in rows for c in COLUMNS[1:])
    plain = np.array(TeacherEmbedder(tiny_base, COLUMNS)(pa.Table.from_pylist(rows))["label"].to_pylist())
    out = TeacherEmbedder(tiny_base, COLUMNS, lexical=stats)(pa.Table.from_pylist(rows))
    labels = np.array(out["label"].to_pylist(), dtype=np.float32).reshape(4, 3, -1)
    assert labels.shape[-1] == 32 + WIDTH
    np.testing.assert_allclose(labels[..., :32], plain.reshape(4, 3, 32), atol=1e-6)
    for i, row in enumerate(rows):
        for j, col in enumerate(COLUMNS):  # the anchor as a query (idf weights), the others as documents
            np.testing.assert_array_equal(labels[i, j, 32:], stats.terms(row[col], query=j == 0))


def test_a_teacher_reads_the_students_window_when_told(tiny_base):
    from sentence_transformers import SentenceTransformer

    rows = _rows(3)
    out = TeacherEmbedder(tiny_base, COLUMNS, max_seq_length=16)(pa.Table.from_pylist(rows))
    labels = np.array(out["label"].to_pylist(), dtype=np.float32).reshape(3, 3, -1)
    model = SentenceTransformer(tiny_base, device="cpu")
    full = model.encode([r["positive"] for r in rows], normalize_embeddings=True)
    model.max_seq_length = 16
    cut = model.encode([r["positive"] for r in rows], normalize_embeddings=True)
    np.testing.assert_allclose(labels[:, 1], cut, atol=1e-5)
    assert np.abs(labels[:, 1] - full).max() > 1e-3  # functions are longer than 16 tokens


def test_a_teacher_told_to_split_identifiers_reads_them_as_words(tiny_base):
    from sentence_transformers import SentenceTransformer

    from sparse_ray.model import IDENTIFIER_BOUNDARY

    rows = [
        {
            "anchor": "Return the userName.",
            "positive": "def getUserName(self):\n    return self.HTTPUser.name",
            "negative_1": "def setUserName(self, v):\n    self.userName = v",
            "language": "python",
        }
    ]
    split = TeacherEmbedder(tiny_base, COLUMNS, split_identifiers=True)(pa.Table.from_pylist(rows))
    plain = TeacherEmbedder(tiny_base, COLUMNS)(pa.Table.from_pylist(rows))
    labels = np.array(split["label"].to_pylist(), dtype=np.float32).reshape(3, -1)
    spaced = [re.sub(IDENTIFIER_BOUNDARY, " ", rows[0][col]) for col in COLUMNS]
    expected = SentenceTransformer(tiny_base, device="cpu").encode(spaced, normalize_embeddings=True)
    np.testing.assert_allclose(labels, expected, atol=1e-5)  # split = spaces put at the boundaries
    assert np.abs(labels - np.array(plain["label"].to_pylist()).reshape(3, -1)).max() > 1e-3


def test_a_bf16_teacher_gives_float32_labels_close_to_the_float32_teachers(tiny_base):
    rows = _rows(6)
    fp32 = TeacherEmbedder(tiny_base, COLUMNS)(pa.Table.from_pylist(rows))
    bf16 = TeacherEmbedder(tiny_base, COLUMNS, bf16=True)(pa.Table.from_pylist(rows))
    assert bf16.schema.field("label").type == pa.list_(pa.float32())
    a = np.array(fp32["label"].to_pylist()).reshape(6, 3, -1)
    b = np.array(bf16["label"].to_pylist()).reshape(6, 3, -1)
    assert (a * b).sum(-1).min() > 0.999  # unit vectors: cosine to the float32 teacher's
    assert np.abs(a - b).max() > 1e-5  # computed in bf16, not float32
