"""How sharp is the hybrid teacher's in-batch distribution? (The case for ``train.teacher_scale``.)

On one language's rows of the bundled sample (a run's training data; the 5 % it holds out are
not left out here), grouped as global batches (``--group`` rows: every anchor against
every row's positive and negatives, as ``inbatch_kl`` sees them), scores with the recipe's teacher
(the dense MiniLM's cosine + w × BM25 over code tokens ÷ the anchor's best, ``worker/distill``) and
prints one JSON line: the teacher's probability of the positive and its entropy at each
``--scales`` value, and the scale that fits the data (lowest cross-entropy of the positive over
the in-batch candidates: the teacher's calibrated temperature). No evaluation set is read, so
nothing here is tuned on one. ``--student RUN`` adds the same numbers for a trained sparse
model's dot products (the student side of the KL, temperature 1).

Usage: python scripts/teacher_scale.py LANGUAGE [--data sample] [--limit 640] [--group 32]
       [--weight 0.5] [--scales 5,10,20] [--student runs/X/model]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def summary(scores: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    """Mean probability of the positive and mean entropy (nats) of each row's softmax."""
    log_p = torch.log_softmax(scores, dim=1)
    p = log_p.exp()
    return {
        "p_positive": round(float(p.gather(1, positive[:, None]).mean()), 4),
        "entropy": round(float(-(p * log_p).sum(dim=1).mean()), 3),
    }


def fitted_scale(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The multiplier of ``scores`` with the lowest cross-entropy of the positive (grid, 0.25 steps)."""
    grid = torch.arange(0.25, 60.0, 0.25)
    losses = [float(torch.nn.functional.cross_entropy(scores * s, positive)) for s in grid]
    return float(grid[int(np.argmin(losses))])


def main() -> None:
    from sentence_transformers import SentenceTransformer, SparseEncoder

    from sparse_ray import evaluate as ev
    from sparse_ray.config import resolve_base_model
    from sparse_ray.data.lexical import LexicalStats
    from sparse_ray.worker.distill import hybrid_scores

    p = argparse.ArgumentParser()
    p.add_argument("language")
    p.add_argument("--data", default="sample")
    p.add_argument("--limit", type=int, default=640)
    p.add_argument("--group", type=int, default=32, help="rows per global batch")
    p.add_argument("--weight", type=float, default=0.5, help="train.teacher_lexical_weight")
    p.add_argument("--scales", default="5,10,20")
    p.add_argument("--student", default=None, help="a trained SparseEncoder directory")
    a = p.parse_args()
    rows = ev.read_rows(a.data, a.language, limit=a.limit, num_negatives=3)
    rows = rows[: len(rows) // a.group * a.group]
    columns = ["positive"] + sorted(k for k in rows[0] if k.startswith("negative_"))
    teacher = SentenceTransformer(resolve_base_model("minilm"), device="cpu")
    teacher.max_seq_length = 128
    stats = LexicalStats.fit([r[c] for r in rows for c in columns])
    student = SparseEncoder(a.student, device="cpu") if a.student else None
    kw = {"convert_to_tensor": True, "batch_size": 32}
    teacher_rows, student_rows, positives = [], [], []
    for start in range(0, len(rows), a.group):
        group = rows[start : start + a.group]
        queries = [r["anchor"] for r in group]
        docs = [r[c] for c in columns for r in group]  # column by column, as the loss concatenates them
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, d = (teacher.encode(t, normalize_embeddings=True, **kw).float() for t in (queries, docs))
        q_terms = stats.term_matrix(queries, query=True)
        d_terms = stats.term_matrix(docs, query=False)
        teacher_rows.append(hybrid_scores(q, d, q_terms, d_terms, a.weight))
        positives.append(torch.arange(len(group)))
        if student is not None:
            sq, sd = student.encode_query(queries, **kw), student.encode_document(docs, **kw)
            student_rows.append((sq.to_dense() @ sd.to_dense().T).float())
    scores, positive = torch.cat(teacher_rows), torch.cat(positives)
    out = {"language": a.language, "rows": len(rows), "group": a.group, "candidates": a.group * len(columns)}
    out["teacher_fitted_scale"] = fitted_scale(scores, positive)
    out |= {f"teacher_x{s}": summary(scores * float(s), positive) for s in a.scales.split(",")}
    out["teacher_at_fitted"] = summary(scores * out["teacher_fitted_scale"], positive)
    if student_rows:
        s = torch.cat(student_rows)
        out["student"] = summary(s, positive)
        out["student_fitted_temperature"] = round(1 / fitted_scale(s, positive), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
