"""CornStack reading: row validation with exact drop counts, hold-out, and worker shards (real Ray)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import threading
import zlib
from collections import Counter

import pytest
from conftest import SAMPLE, sample_rows, write_shard

from sparse_ray.config import LANGUAGES, load_config
from sparse_ray.data import pipeline, sources
from sparse_ray.data import plan as steps
from sparse_ray.data.cornstack import RowRules, is_holdout, parse_line, read_records
from sparse_ray.errors import DataError

RULES = RowRules("python", num_negatives=2, holdout_fraction=0.0, max_query_chars=50, max_document_chars=10_000)


def row(**kw) -> str:
    base = {
        "query": "Return the sum.",
        "document": "def add(a, b):\n    return a + b",
        "negatives": ["def sub(a, b):\n    return a - b", "def mul(a, b):\n    return a * b", "def x(): pass"],
        "negative_scores": [0.5, 0.9, 0.1],
        "document_score": 1.0,
        "document_rank": 0,
        "metadata": {},
    }
    base.update(kw)
    return json.dumps(base)


def test_valid_row_takes_top_k_negatives_by_score():
    out = parse_line(row().encode(), RULES)
    assert out["reason"] == "" and out["split"] == "train"
    assert out["anchor"] == "Return the sum."
    assert out["negatives"] == ["def mul(a, b):\n    return a * b", "def sub(a, b):\n    return a - b"]


def test_scores_follow_the_chosen_negatives_and_rows_without_them_drop_for_a_data_teacher():
    out = parse_line(row(negative_scores=["0.5", "0.9", "0.1"]).encode(), RULES)
    assert out["scores"] == [1.0, 0.9, 0.5]  # document_score, then mul (0.9) and sub (0.5) as chosen
    unscored = row(negative_scores=None)
    assert parse_line(unscored.encode(), RULES)["scores"] is None
    assert parse_line(unscored.encode(), dataclasses.replace(RULES, need_scores=True))["reason"] == "no_teacher_scores"
    nan_positive = row(document_score="nan")
    assert (
        parse_line(nan_positive.encode(), dataclasses.replace(RULES, need_scores=True))["reason"] == "no_teacher_scores"
    )


def test_string_scores_are_accepted():
    out = parse_line(row(negative_scores=["0.5", "0.9", "0.1"]).encode(), RULES)
    assert out["negatives"][0].startswith("def mul")


def test_false_negative_guard_drops_negatives_close_to_the_positive():
    rules = dataclasses.replace(RULES, num_negatives=1, false_negative_ratio=0.8)
    out = parse_line(row().encode(), rules)  # mul scores 0.9 >= 0.8 * 1.0: a likely false negative
    assert out["negatives"] == ["def sub(a, b):\n    return a - b"] and out["guarded"] == 1
    # two of three guarded leaves too few for k=2: the row is dropped, not padded
    rules = dataclasses.replace(RULES, false_negative_ratio=0.4)
    assert parse_line(row().encode(), rules)["reason"] == "too_few_negatives"
    # no usable positive score (CornStack rows with rank -1 have 0.0): the guard does not apply
    assert parse_line(row(document_score=0.0).encode(), rules)["reason"] == ""


def test_softmax_sampling_follows_the_scores_and_is_seeded():
    negatives = [f"def f{i}(): return {i}" for i in range(6)]
    scores = [0.9, 0.8, 0.5, 0.3, 0.2, 0.1]
    rules = dataclasses.replace(RULES, num_negatives=2, negative_sampling="softmax", negative_temperature=0.1)
    picks = Counter()
    for q in range(2000):
        line = row(query=f"query {q}", negatives=negatives, negative_scores=scores).encode()
        out = parse_line(line, rules)
        assert out["negatives"] == parse_line(line, rules)["negatives"]  # same seed, same draw
        assert len(set(out["negatives"])) == 2
        picks.update(out["negatives"])
    # softmax(score / 0.1) over the six: f0 is drawn most, f5 least, and each drawn at least once
    counts = [picks[n] for n in negatives]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0 and counts[0] > 3 * counts[3]
    cold = dataclasses.replace(rules, negative_temperature=1e-4)  # temperature to 0: the top-k
    assert parse_line(row(query="q", negatives=negatives, negative_scores=scores).encode(), cold)["negatives"] == [
        negatives[0],
        negatives[1],
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe\x00garbage", "undecodable_line"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps({"query": "q", "document": "d"}).encode(), "missing_field"),
        (row(query=5).encode(), "wrong_type"),
        (row(negatives="def f(): pass").encode(), "wrong_type"),
        (row(query="   ").encode(), "empty_text"),
        (row(negatives=[]).encode(), "too_few_negatives"),
        (row(negatives=["", None, "def f(): pass"], negative_scores=None).encode(), "too_few_negatives"),
    ],
)
def test_bad_rows_are_dropped_with_their_reason(line, reason):
    assert parse_line(line, RULES)["reason"] == reason


def test_long_texts_are_cut_and_counted():
    out = parse_line(row(query="word " * 40).encode(), RULES)
    assert len(out["anchor"]) == 50 and out["cut"] == 1


def test_holdout_is_stable_and_near_its_fraction():
    queries = [f"query number {i}" for i in range(4000)]
    first = [is_holdout(q, "python", 0.1) for q in queries]
    assert first == [is_holdout(q, "python", 0.1) for q in queries]
    assert 0.08 < sum(first) / len(first) < 0.12


def test_every_language_has_a_bundled_sample():
    for lang in LANGUAGES:
        assert sources.list_shards(sources.language_root("sample", lang, several=True), lang).files


def test_missing_and_offline_sources_fail_fast(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no CornStack shards"):
        sources.list_shards(str(tmp_path), "python")
    (tmp_path / "python").mkdir()
    monkeypatch.setattr(sources, "SAMPLE_DIR", tmp_path)
    with pytest.raises(DataError, match="no bundled sample for java .samples: python"):
        sources.language_root("sample", "java", several=False)
    with pytest.raises(DataError, match="Hugging Face hub .*pass --data"):
        sources.list_shards(sources.HUB_REPO.format(language="python"), "python")


def test_count_pass_is_exact_on_broken_shards(ray_cluster, tmp_path):
    good = [row(query=f"Return the sum number {i}.") for i in range(10)]
    write_shard(tmp_path / "d" / "shard-00000.jsonl.gz", good + ["{oops", row(query=""), row(negatives=[])])
    write_shard(tmp_path / "d" / "shard-00001.jsonl", good[:3] + ['"just a string"'], gz=False)
    truncated = gzip.compress("\n".join(good).encode())[:-30]
    (tmp_path / "d" / "shard-00002.jsonl.gz").write_bytes(truncated)
    cfg = load_config("quick_test", [f"data.path={tmp_path / 'd'}", "data.num_negatives=2", "data.holdout_fraction=0"])
    stats = pipeline.count(pipeline.read(cfg, sources.resolve_sources(cfg)))
    s = stats.to_dict()["python"]
    assert s["dropped"]["bad_json"] == 1
    assert s["dropped"]["empty_text"] == 1
    assert s["dropped"]["too_few_negatives"] == 1
    assert s["dropped"]["not_an_object"] == 1
    assert s["dropped"]["truncated_shard"] == 1
    # the truncated shard yields the complete rows before the cut, never a half row
    assert 13 <= s["train_rows"] < 23 and s["holdout_rows"] == 0
    assert s["rows_read"] == s["train_rows"] + sum(s["dropped"].values())


def _kept(blob: bytes, rules: RowRules) -> tuple[list[str], int]:
    records = [r for b in read_records(io.BytesIO(blob), rules, gzipped=True) for r in b.to_pylist()]
    return [r["anchor"] for r in records if not r["reason"]], sum(r["reason"] == "truncated_shard" for r in records)


def test_cut_gzip_shard_keeps_every_complete_line_of_its_readable_prefix():
    """A shard cut anywhere (inside the first deflate block too) yields exactly the complete JSON lines
    that its readable prefix decompresses to, and one ``truncated_shard`` record."""
    rows = sample_rows(300)
    rules = RowRules("python", 1, 0.0, 10**6, 10**6)
    queries = [parse_line(json.dumps(r).encode(), rules)["anchor"] for r in rows]
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    assert len(blob) > 64 * 1024  # several deflate blocks
    offsets = [20, 200, 1024, 5000, 30_000, len(blob) // 2, len(blob) - 9, len(blob) - 1]
    for cut in offsets:
        complete = zlib.decompressobj(wbits=31).decompress(blob[:cut]).count(b"\n")
        kept, truncated = _kept(blob[:cut], rules)
        assert kept == queries[:complete], cut
        assert truncated == 1, cut
    assert len(_kept(blob[:5000], rules)[0]) >= 2  # a few kilobytes already hold complete rows
    assert _kept(blob, rules) == (queries, 0)
    # concatenated members (as `cat a.gz b.gz` makes) read as one stream
    halves = gzip.compress("".join(json.dumps(r) + "\n" for r in rows[:150]).encode())
    halves += gzip.compress("".join(json.dumps(r) + "\n" for r in rows[150:]).encode())
    assert _kept(halves, rules) == (queries, 0)


def test_holdout_disjoint_and_worker_shards_cover_train(ray_cluster):
    cfg = load_config("quick_test", ["data.path=sample", "data.holdout_fraction=0.1"])
    ds = pipeline.read(cfg, sources.resolve_sources(cfg))
    train = {r["anchor"] for r in pipeline.split_rows(ds, "train", 1).iter_rows()}
    hold = {r["anchor"] for r in pipeline.split_rows(ds, "holdout", 1).iter_rows()}
    assert hold and train and not (train & hold)
    queries = {json.loads(line)["query"] for f in SAMPLE.glob("shard-*.jsonl.gz") for line in gzip.open(f)}
    assert len(train) + len(hold) == len(queries)  # a query in two shards goes to one split

    n = 2 * 96  # two workers, 96 rows each
    splits = pipeline.split_rows(ds, "train", 1).limit(n).streaming_split(2, equal=True)
    seen: list[list[str]] = [[], []]

    def consume(i: int) -> None:
        seen[i] = [r["anchor"] for r in splits[i].iter_rows()]

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [len(s) for s in seen] == [96, 96]
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) <= train


def test_every_language_has_its_own_holdout_disjoint_from_its_training_rows(ray_cluster):
    langs = ["java", "go", "ruby"]
    cfg = load_config("quick_test", ["data.path=sample", f"data.languages={','.join(langs)}"])
    for lang, ds in pipeline.read_languages(cfg, sources.resolve_sources(cfg)).items():
        train = pipeline.split_rows(ds, "train", 1).take_all()
        hold = pipeline.split_rows(ds, "holdout", 1).take_all()
        assert hold and train, lang
        assert {r["language"] for r in train + hold} == {lang}
        assert not {r["anchor"] for r in train} & {r["anchor"] for r in hold}


def test_shuffle_is_bounded_and_seeded(ray_cluster):
    """The worker's shuffle (a local buffer, seeded by train.seed + epoch): same seed, same order."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        cfg = load_config("quick_test", ["data.path=sample", "data.languages=go"])
        ds = pipeline.split_rows(pipeline.read(cfg, sources.resolve_sources(cfg)), "train", 1)

        def order(seed: int | None) -> list[str]:
            blocks = ds.iter_batches(
                batch_size=256,
                batch_format="pyarrow",
                local_shuffle_buffer_size=50 if seed else None,
                local_shuffle_seed=seed,
            )
            return [a for b in blocks for a in b["anchor"].to_pylist()]

        plain, first = order(None), order(12)
        assert first == order(12) and first != order(13)
        assert sorted(first) == sorted(plain) and first != plain
    finally:
        ctx.execution_options.preserve_order = before


def test_plan_uses_whole_batches_and_equal_rows():
    cfg = load_config("quick_test", ["data.max_samples=1000", "train.batch_size=8", "train.epochs=2"])
    plan = steps.plan_steps(cfg, train_rows={"python": 1982})
    assert plan.rows_per_slot == 496 and plan.steps_per_epoch == 62 and plan.max_steps == 124
    assert plan.schedule == ["python"] * 62 and plan.languages == {"python": {"rows_per_slot": 496, "steps": 62}}
    with pytest.raises(DataError, match="cannot fill one batch"):
        steps.plan_steps(cfg, train_rows={"python": 10})


ROWS = {"python": 8000, "java": 4000, "go": 1000, "rust": 500}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("proportional", {"python": 8 / 13.5, "java": 4 / 13.5, "go": 1 / 13.5, "rust": 0.5 / 13.5}),
        ("round_robin", {"python": 0.25, "java": 0.25, "go": 0.25, "rust": 0.25}),
        # temperature 2: probability ∝ sqrt(rows)
        ("temperature", {k: v**0.5 / sum(x**0.5 for x in ROWS.values()) for k, v in ROWS.items()}),
    ],
)
def test_language_schedule_matches_its_strategy(strategy, expected):
    available = {lang: n // 8 * 10 for lang, n in ROWS.items()}  # never exhausted in 600 steps
    schedule = steps.language_schedule(available, 600, strategy, 2.0, seed=3)
    assert len(schedule) == 600
    assert schedule == steps.language_schedule(available, 600, strategy, 2.0, seed=3)  # seeded
    shares = Counter(schedule)
    for lang, p in expected.items():
        assert abs(shares[lang] / 600 - p) < 0.05, (lang, shares)
    if strategy == "round_robin":
        assert schedule[:8] == ["python", "java", "go", "rust"] * 2


def test_language_schedule_never_uses_more_batches_than_a_language_has():
    schedule = steps.language_schedule({"python": 50, "rust": 3}, 53, "round_robin", 1.0, seed=0)
    assert Counter(schedule) == {"python": 50, "rust": 3}
    cfg = load_config("quick_test", ["data.languages=python,rust", "data.path=sample", "train.batch_size=8"])
    plan = steps.plan_steps(cfg, {"python": 1600, "rust": 64})
    assert plan.languages["rust"] == {"rows_per_slot": 32, "steps": 4}
    assert plan.steps_per_epoch == len(plan.schedule) == sum(v["steps"] for v in plan.languages.values())


def test_inspect_counts_schema_and_drops(tmp_path, capsys):
    from sparse_ray.cli import main
    from sparse_ray.tools.inspect_data import inspect

    lines = [row(query=f"Return the sum number {i}.") for i in range(5)] + ["{oops", row(negatives=[])]
    write_shard(tmp_path / "d" / "shard-00000.jsonl.gz", lines)
    info = inspect(str(tmp_path / "d"), "python")
    assert (info["rows"], info["valid"]) == (7, 5)
    assert info["dropped"] == {"bad_json": 1, "too_few_negatives": 1}
    assert info["negatives_per_row"] == {"min": 3, "median": 3, "max": 3}
    assert info["schema"]["query: str"] == 5 and len(info["examples"]) == 3
    assert main(["data", "inspect", "sample", "--limit", "50"]) == 0
    assert "query: str" in capsys.readouterr().out
    assert main(["data", "inspect", "sample", "--language", "cobol"]) == 2  # not "no bundled sample"
    assert "unknown language 'cobol'; choose from python" in capsys.readouterr().err
