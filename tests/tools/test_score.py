"""``data score``: the teacher's cosines land in the shards (and, mining, its top documents of the
shard become the negatives), bad lines are counted, a rerun skips what is there, S3 works."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from sparse_ray.cli import main
from sparse_ray.config import resolve_base_model
from sparse_ray.data.cornstack import RowRules, parse_line
from sparse_ray.tools.score import embed, load_teacher, score
from tests.conftest import sample_rows, write_shard


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(resolve_base_model("minilm"))


@pytest.fixture(scope="module")
def rows():
    return sample_rows(24)


def read(path) -> list[dict]:
    return [json.loads(line) for line in gzip.open(path, "rt")]


def cosines(teacher, query: str, texts: list[str]) -> list[float]:
    q, *docs = embed(teacher, [query, *texts])
    return [float(q @ d) for d in docs]


def test_scores_are_the_teachers_cosines_and_bad_lines_are_counted(tmp_path, teacher, rows):
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"query": "no document"})]
    write_shard(tmp_path / "in" / "python" / "shard-00000.jsonl.gz", lines)
    report = score("python", str(tmp_path / "out"), teacher, str(tmp_path / "in"))
    out = read(tmp_path / "out" / "python" / "shard-00000.jsonl.gz")
    assert report.rows == len(out) == len(rows) and report.dropped == {"unparseable": 2}
    for before, after in zip(rows[:4], out[:4], strict=True):
        want = cosines(teacher, before["query"], [before["document"], *before["negatives"]])
        assert after["document_score"] == pytest.approx(want[0], abs=1e-4)
        assert after["negative_scores"] == pytest.approx(want[1:], abs=1e-4)
        assert after["negative_scores"] != before["negative_scores"]  # BM25's scores are gone
        rest = {k: v for k, v in after.items() if k not in ("document_score", "negative_scores")}
        assert rest == {k: v for k, v in before.items() if k not in ("document_score", "negative_scores")}
    again = score("python", str(tmp_path / "out"), teacher, str(tmp_path / "in"))
    assert again.skipped == ["shard-00000.jsonl.gz"] and again.scored == []


def test_mining_takes_the_teachers_top_documents_of_the_shard(tmp_path, teacher, rows):
    write_shard(tmp_path / "in" / "python" / "shard-00000.jsonl.gz", [json.dumps(r) for r in rows])
    report = score("python", str(tmp_path / "out"), teacher, str(tmp_path / "in"), mine=3, guard=0.9)
    out = read(tmp_path / "out" / "python" / "shard-00000.jsonl.gz")
    assert len(out) + report.dropped["too_few_negatives"] == len(rows) and len(out) > len(rows) // 2
    docs = [r["document"] for r in rows]
    for row in out[:5]:
        sims = np.array(cosines(teacher, row["query"], docs))
        pos = sims[docs.index(row["document"])]
        allowed = [i for i in np.argsort(-sims, kind="stable") if docs[i] != row["document"] and sims[i] < 0.9 * pos]
        assert row["negatives"] == [docs[i] for i in allowed[:3]]
        assert row["negative_scores"] == pytest.approx([sims[i] for i in allowed[:3]], abs=1e-4)
        assert row["document_score"] == pytest.approx(pos, abs=1e-4)
        parsed = parse_line(json.dumps(row).encode(), RowRules("python", 3, 0.0, 10**6, 10**6))
        assert parsed["negatives"] == row["negatives"]  # the training reader takes them as they are


def test_scores_go_to_s3(tmp_path, teacher, rows, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("scored")
    write_shard(tmp_path / "in" / "go" / "shard-00000.jsonl.gz", [json.dumps(r) for r in rows[:6]])
    report = score("go", "s3://scored/cornstack", teacher, str(tmp_path / "in"))
    with fs.open("scored/cornstack/go/shard-00000.jsonl.gz", "rb") as fh:
        out = [json.loads(line) for line in gzip.decompress(fh.read()).splitlines()]
    assert report.rows == len(out) == 6
    assert out[0]["document_score"] == pytest.approx(
        cosines(teacher, rows[0]["query"], [rows[0]["document"]])[0], abs=1e-4
    )


def test_the_command_scores_every_language_and_refuses_bad_input_in_one_line(tmp_path, capsys, rows):
    for lang in ("go", "rust"):
        write_shard(tmp_path / "in" / lang / "shard-00000.jsonl.gz", [json.dumps(r) for r in rows[:5]])
    assert (
        main(["data", "score", "--teacher", "minilm", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["go", "rust"]
    capsys.readouterr()
    bad = [
        (["--teacher", str(tmp_path / "nothing")], f"model {tmp_path / 'nothing'} does not exist"),
        (["--teacher", "minilm", "--language", "cobol"], "unknown language 'cobol'"),
        (["--teacher", "minilm", "--mine", "-1"], "--mine must be >= 0"),
        (["--teacher", "minilm", "--in", str(tmp_path / "missing")], "no CornStack shards"),
    ]
    for extra, message in bad:
        argv = ["data", "score", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
