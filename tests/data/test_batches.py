"""Worker-side batching: whole single-language batches, no text twice in a batch, never short."""

from __future__ import annotations

from collections import Counter

from sparse_ray.data.batches import scheduled_batches

COLS = ("anchor", "positive", "negative_1")


def rows(lang: str, n: int, shared: frozenset[int] = frozenset()) -> list[dict]:
    """n rows; those with an index in ``shared`` all have the same negative."""
    out = []
    for i in range(n):
        neg = "popular negative" if i in shared else f"{lang} neg {i}"
        out.append({"anchor": f"{lang} q {i}", "positive": f"{lang} doc {i}", "negative_1": neg, "language": lang})
    return out


def test_batches_follow_the_schedule_and_hold_one_language():
    streams = {"python": iter(rows("python", 32)), "go": iter(rows("go", 16))}
    schedule = ["python", "go", "python", "python", "go", "python"]
    made = list(scheduled_batches(streams, schedule, 8, COLS, True, Counter()))
    assert [lang for lang, _ in made] == schedule
    for lang, batch in made:
        assert len(batch) == 8 and {r["language"] for r in batch} == {lang}
    # every row used exactly once
    used = [r["anchor"] for _, b in made for r in b]
    assert sorted(used) == sorted(r["anchor"] for r in rows("python", 32) + rows("go", 16))


def test_no_text_twice_in_a_batch_clashing_rows_wait():
    # the first four rows share one negative: one of them fits in each of the 4 batches
    data = rows("java", 32, shared=frozenset(range(4)))
    stats = Counter()
    made = list(scheduled_batches({"java": iter(data)}, ["java"] * 4, 8, COLS, True, stats))
    for _, batch in made:
        texts = [r[c] for r in batch for c in COLS]
        assert len(texts) == len(set(texts))
    assert stats["rows_deferred"] == 3 and stats["duplicates_admitted"] == 0
    assert sorted(r["anchor"] for _, b in made for r in b) == sorted(r["anchor"] for r in data)


def test_a_batch_is_never_short_duplicates_are_admitted_and_counted_at_the_tail():
    data = rows("ruby", 16, shared=frozenset(range(16)))  # every row has the same negative
    stats = Counter()
    made = list(scheduled_batches({"ruby": iter(data)}, ["ruby"] * 2, 8, COLS, True, stats))
    assert [len(b) for _, b in made] == [8, 8]
    assert stats["duplicates_admitted"] == 14  # one row per batch fits, the rest are admitted


def test_without_dedup_rows_keep_stream_order():
    data = rows("go", 16, shared=frozenset(range(16)))
    made = list(scheduled_batches({"go": iter(data)}, ["go"] * 2, 8, COLS, False, Counter()))
    assert [r["anchor"] for _, b in made for r in b] == [r["anchor"] for r in data]
