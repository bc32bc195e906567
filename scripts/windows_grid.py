"""Which document windows should a model read? (How ``model.document_windows`` was chosen.)

Scores a trained SparseEncoder on the hold-outs of the bundled training languages (the rows a
recipe run leaves out: ``--holdout`` of each language, with ``--negatives`` hard negatives each
in the corpus) for every window count and tail weight of the grid, through the same loader and
metric code as ``sparse-ray evaluate`` (``windows.use_document_windows``, ``evaluate.model_ir``).
Prints one JSON line per setting: nDCG@10 and document active dims per language, and the
query-weighted and macro means over languages. No unseen evaluation set is read, so the choice
is not tuned on one.

Usage: python scripts/windows_grid.py RUN_OR_MODEL [--data sample] [--counts 1,2,4,8]
       [--weights 0.2,0.3,0.4,0.5,1] [--languages all] [--negatives 3] [--holdout 0.05]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sparse_ray import windows
from sparse_ray.config import LANGUAGES
from sparse_ray.evaluate import IRTask, model_ir, read_rows
from sparse_ray.model import quiet_load
from sparse_ray.rundir import model_path


def encoder(path: str, setting: windows.DocumentWindows) -> Any:
    """The model at ``path`` reading ``setting`` (whatever windows were saved with it)."""
    from sentence_transformers import SparseEncoder

    with quiet_load():
        model = SparseEncoder(path, device="cpu")
    windows.use_document_windows(model, setting)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="sample")
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--weights", default="0.2,0.3,0.4,0.5,1")
    ap.add_argument("--languages", default="all")
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--holdout", type=float, default=0.05)
    args = ap.parse_args()
    languages = list(LANGUAGES) if args.languages == "all" else args.languages.split(",")
    tasks = {
        lang: IRTask.from_rows(read_rows(args.data, lang, 1000, args.negatives, holdout=args.holdout))
        for lang in languages
    }
    for count in [int(c) for c in args.counts.split(",")]:
        for weight in [float(w) for w in args.weights.split(",")] if count > 1 else [1.0]:
            model = encoder(model_path(args.model), windows.DocumentWindows(count, weight))
            per = {lang: model_ir(model, task) for lang, task in tasks.items()}
            queries = {lang: len(task.queries) for lang, task in tasks.items()}
            ndcg = {lang: round(m["ndcg@10"], 4) for lang, m in per.items()}
            print(
                json.dumps(
                    {
                        "count": count,
                        "tail_weight": weight,
                        "weighted": round(sum(ndcg[k] * queries[k] for k in ndcg) / sum(queries.values()), 4),
                        "macro": round(sum(ndcg.values()) / len(ndcg), 4),
                        "ndcg@10": ndcg,
                        "doc_dims": {lang: round(m["corpus_active_dims"], 1) for lang, m in per.items()},
                        "queries": queries,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
