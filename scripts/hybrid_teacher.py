"""Is a dense + BM25 hybrid a better scorer than either alone? (The case for ``train.teacher_lexical_weight``.)

On one language's rows (their positives and negatives as the corpus), ranks with the dense MiniLM
(cosine), with BM25 over code tokens (``data/lexical.py``, statistics from that corpus), and with
cosine + w × BM25 ÷ the query's highest BM25, for several w; prints nDCG@10 of each as one JSON
line. The teacher reads ``--max-seq-length`` tokens, as ``train.teacher_max_seq_length``, and
with ``--bf16`` encodes under bf16 autocast, as the teacher actors of a ``cluster.bf16=true`` run.

Usage: python scripts/hybrid_teacher.py LANGUAGE [--data sample] [--limit 400] [--holdout 0.05]
       [--weights 0.3,0.5,1.0] [--max-seq-length 128] [--split-identifiers] [--bf16]
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    from sentence_transformers import SentenceTransformer

    from sparse_ray import evaluate as ev
    from sparse_ray.config import resolve_base_model
    from sparse_ray.data.lexical import LexicalStats, scores
    from sparse_ray.model import split_identifiers_in

    p = argparse.ArgumentParser()
    p.add_argument("language")
    p.add_argument("--data", default="sample")
    p.add_argument("--limit", type=int, default=400)
    p.add_argument("--holdout", type=float, default=None, help="only a training run's hold-out side")
    p.add_argument("--weights", default="0.3,0.5,1.0")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--split-identifiers", action="store_true", help="the teacher reads getUserName as get user name")
    p.add_argument("--bf16", action="store_true", help="encode under bf16 autocast")
    a = p.parse_args()
    rows = ev.read_rows(a.data, a.language, limit=a.limit, num_negatives=3, holdout=a.holdout)
    task = ev.IRTask.from_rows(rows)
    queries, corpus = list(task.queries.values()), list(task.corpus.values())
    model = SentenceTransformer(resolve_base_model("minilm"), device="cpu")
    model.max_seq_length = a.max_seq_length
    if a.split_identifiers:
        split_identifiers_in(model[0])
    kw = {"convert_to_tensor": True, "normalize_embeddings": True, "batch_size": 32}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        encoded_queries, encoded_corpus = model.encode(queries, **kw), model.encode(corpus, **kw)
    dense = encoded_queries.float() @ encoded_corpus.float().T
    stats = LexicalStats.fit(corpus)
    q = stats.term_matrix(queries, query=True)
    d = stats.term_matrix(corpus, query=False)
    bm25 = scores(q, d)

    def ndcg(s: torch.Tensor) -> float:
        return round(ev.ir_metrics(task, ev.Scored(s, {}))["ndcg@10"], 4)

    out = {"language": a.language, "queries": len(queries), "documents": len(corpus)}
    out |= {"dense": ndcg(dense), "bm25_code": ndcg(bm25)}
    best = bm25 / bm25.max(dim=1, keepdim=True).values.clamp_min(1e-6)
    out |= {f"hybrid_w{w}": ndcg(dense + float(w) * best) for w in a.weights.split(",")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
