"""Golden tests of the objective: N ranks × b rows must optimise what 1 process × N·b rows does.

Real gloo process groups (1, 2 and 4 local processes), the tiny BERT with dropout 0, one fixed
batch of 16 rows: the full objective (ranking loss with gathered negatives + both FLOPS
regularisers) and the gradient of every parameter after DDP's averaging must match the single
process. ``regularizer_scope=local`` (sentence-transformers' stock SpladeLoss) must not: the test
that proves the fix also proves it can fail. The in-batch distillation objective (MNRL + KL to a
teacher's global score matrix, built from gathered teacher embeddings) must match as well.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import sample_rows
from gloo import run_ranks

from sparse_ray.config import TrainConfig
from sparse_ray.worker.loss import GlobalFlopsLoss, build_loss, ranking_loss, text_keys

ROWS = 16
#: Regulariser weights large enough that a per-device FLOPS shows in the loss (the defaults are 5e-5/3e-5).
WEIGHTS = {"query_regularizer_weight": 1e-2, "document_regularizer_weight": 1e-2}


def _batch(duplicates: bool) -> list[tuple[str, str, str]]:
    rows = [(r["query"], r["document"], r["negatives"][0]) for r in sample_rows(ROWS)]
    if duplicates:  # the second half's negatives are the first half's positives: cross-rank false negatives
        rows = [*rows[:8], *[(q, p, rows[i][1]) for i, (q, p, _) in enumerate(rows[8:])]]
    return rows


def _teacher_labels() -> torch.Tensor:
    """A fixed teacher's normalised embeddings of each row's anchor, positive and negative, flattened."""
    vectors = torch.rand(ROWS, 3, 8, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.normalize(vectors, dim=-1).flatten(1)


SCENARIOS = (  # name, regulariser scope, cross-rank duplicates, loss, GradCache mini-batch
    ("global", "global", False, "mnrl", 0),
    ("local", "local", False, "mnrl", 0),
    ("dup", "global", True, "mnrl", 0),
    ("inbatch_kl", "global", True, "mnrl+inbatch_kl", 0),
    ("cached", "global", True, "mnrl+inbatch_kl", 3),
)


def _objective(rank: int, world: int, base: str) -> dict:
    """Per scenario: the objective (mean over ranks), masked pairs, and rank 0's averaged gradients."""
    import torch.distributed as dist

    from sparse_ray.model import build_model

    out = {}
    for name, scope, duplicates, objective, mini in SCENARIOS:
        torch.manual_seed(0)
        model = build_model("splade", base, 32, dropout=0.0)
        model.train()
        counts: Counter = Counter()
        train = TrainConfig(
            regularizer_scope=scope, loss=objective, teacher="t", teacher_scale=5.0, mini_batch_size=mini, **WEIGHTS
        )
        loss = build_loss(model, train, "splade", world, counts)
        share = ROWS // world
        mine = _batch(duplicates)[rank * share : (rank + 1) * share]
        features = [model.preprocess([row[i] for row in mine]) for i in range(3)]
        parts = loss(features, _teacher_labels()[rank * share : (rank + 1) * share])
        assert ("distill_loss" in parts) == (objective != "mnrl")
        total = sum(parts.values())
        total.backward()
        value = total.detach().clone()
        masked = torch.tensor(float(counts["masked_duplicates"]))
        if world > 1:  # what DDP and ZeRO do: average gradients (and the logged loss) over ranks
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
            dist.all_reduce(value)
            value /= world
            dist.all_reduce(masked)
        # numpy, not tensors: torch would share tensors through files that vanish with the process
        grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
        out[name] = {"loss": float(value), "masked": int(masked), "grads": grads if rank == 0 else None}
    return out


@pytest.fixture(scope="module")
def runs(tiny_base) -> dict[int, dict]:
    runs = {world: run_ranks(_objective, world, tiny_base)[0] for world in (1, 2, 4)}
    for run in runs.values():
        for scenario in run.values():
            scenario["grads"] = {k: torch.from_numpy(v) for k, v in scenario["grads"].items()}
    return runs


def _grad_gap(a: dict, b: dict) -> float:
    """The largest gradient difference over all parameters, relative to the scale of its tensor
    (floored at 1e-3 of the model's largest gradient: near-zero tensors carry only rounding noise)."""
    assert a.keys() == b.keys() and len(a) > 10
    floor = 1e-3 * max(float(g.abs().max()) for g in a.values())
    return max(float((a[k] - b[k]).abs().max()) / max(float(a[k].abs().max()), floor) for k in a)


def _expected_masks(rows: list[tuple[str, str, str]], base: str) -> int:
    """(anchor, candidate) pairs whose candidate is the anchor's positive as the model sees it
    (the same token ids after truncation to 32 tokens), the positive's own slot excepted."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    seen = [tuple(tokenizer(row[c], truncation=True, max_length=32)["input_ids"]) for row in rows for c in (1, 2)]
    rows = [(row[0], seen[2 * i], seen[2 * i + 1]) for i, row in enumerate(rows)]
    candidates = [(j, text) for col in (1, 2) for j, text in enumerate(row[col] for row in rows)]
    slots = [(col, j) for col in (1, 2) for j in range(len(rows))]
    return sum(
        1
        for i, row in enumerate(rows)
        for (col, j), (_, text) in zip(slots, candidates, strict=True)
        if text == row[1] and (col, j) != (1, i)
    )


#: Float tolerance relative to each gradient tensor's scale (fp32 sums in another order reach ~1e-5).
TOL = 3e-5


@pytest.mark.parametrize("world", [2, 4])
def test_n_ranks_optimise_the_single_process_objective(runs, world):
    one, many = runs[1]["global"], runs[world]["global"]
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert _grad_gap(many["grads"], one["grads"]) < TOL


@pytest.mark.parametrize("world", [2, 4])
def test_local_scope_changes_the_objective_with_the_worker_count(runs, world):
    one, many = runs[1]["local"], runs[world]["local"]
    assert abs(many["loss"] - one["loss"]) > 1e-4 * abs(one["loss"])
    assert _grad_gap(many["grads"], one["grads"]) > 10 * TOL


def test_cross_rank_duplicates_are_masked_and_counted_on_every_worker_count(runs, tiny_base):
    expected = _expected_masks(_batch(duplicates=True), tiny_base)
    assert expected >= _expected_masks(_batch(duplicates=False), tiny_base) + 8  # the built batch adds 8 more
    assert [runs[w]["global"]["masked"] for w in (1, 2, 4)] == [_expected_masks(_batch(False), tiny_base)] * 3
    assert [runs[w]["dup"]["masked"] for w in (1, 2, 4)] == [expected] * 3
    assert runs[2]["local"]["masked"] == 0  # the stock loss masks nothing
    for world in (2, 4):
        assert runs[world]["dup"]["loss"] == pytest.approx(runs[1]["dup"]["loss"], rel=1e-6)
        assert _grad_gap(runs[world]["dup"]["grads"], runs[1]["dup"]["grads"]) < TOL


def test_ranking_loss_is_the_stock_loss_when_nothing_is_masked():
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss

    torch.manual_seed(0)
    q, pos, neg = (torch.rand(6, 50) for _ in range(3))
    stock = SparseMultipleNegativesRankingLoss(model=None, scale=1.0)
    keys = [torch.arange(6), torch.arange(6, 12)]
    ours = ranking_loss(q, [pos, neg], 1.0, keys)
    torch.testing.assert_close(ours, stock.compute_loss_from_embeddings([q, pos, neg], None))


def test_masking_removes_an_identical_candidate_from_the_softmax():
    torch.manual_seed(0)
    q, pos, neg = (torch.rand(4, 30) for _ in range(3))
    counts: Counter = Counter()
    keys = [torch.arange(4), torch.tensor([10, 11, 0, 13])]  # row 2's negative is row 0's positive
    masked = ranking_loss(q, [pos, neg], 1.0, keys, counts)
    scores = q @ torch.cat([pos, neg]).T
    scores[0, 6] = float("-inf")
    expected = -(scores.diagonal()[:4] - torch.logsumexp(scores, dim=1)).mean()
    torch.testing.assert_close(masked, expected)
    assert counts["masked_duplicates"] == 1


def test_global_flops_is_the_stock_flops_in_one_process():
    from sentence_transformers.sparse_encoder.losses import FlopsLoss

    e = torch.rand(5, 40)
    stock = FlopsLoss(None).compute_loss_from_embeddings(e)
    torch.testing.assert_close(GlobalFlopsLoss(None).compute_loss_from_embeddings(e), stock)


def test_text_keys_are_equal_exactly_for_equal_token_ids():
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 0], [5, 6, 8, 0], [0, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    keys = text_keys({"input_ids": ids, "attention_mask": mask})
    assert keys[0] == keys[1] and len(set(keys.tolist())) == 3


@pytest.mark.parametrize("world", [2, 4])
def test_n_ranks_distil_the_teachers_global_matrix_as_one_process(runs, world):
    one, many = runs[1]["inbatch_kl"], runs[world]["inbatch_kl"]
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert _grad_gap(many["grads"], one["grads"]) < TOL
    assert one["loss"] != pytest.approx(runs[1]["dup"]["loss"], rel=1e-3)  # the KL term is in the objective


@pytest.mark.parametrize("world", [1, 2, 4])
def test_gradcache_mini_batches_give_the_full_batch_objective_and_gradients(runs, world):
    """GradCache in ragged mini-batches of 3 (train.mini_batch_size) on N ranks = the plain objective in one process."""
    one, cached = runs[1]["inbatch_kl"], runs[world]["cached"]
    assert cached["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert _grad_gap(cached["grads"], one["grads"]) < TOL
