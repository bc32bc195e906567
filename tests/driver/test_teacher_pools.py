"""The teacher on the driver: how many actors each language's pool gets."""

from __future__ import annotations

from sparse_ray.driver.teacher import headroom, pool_sizes


def test_the_largest_language_gets_the_replicas_and_the_others_their_share():
    rows = {"python": 3408, "java": 176, "go": 1800, "php": 0}
    assert pool_sizes(2, rows) == {"python": 2, "java": 1, "go": 2, "php": 1}
    assert pool_sizes(4, rows) == {"python": 4, "java": 1, "go": 3, "php": 1}
    assert pool_sizes(1, rows) == {lang: 1 for lang in rows}  # the default: one actor per language


def test_headroom_counts_every_pools_actors():
    record = {"rows_per_second": 10.0, "replicas": {"python": 2, "java": 1}}
    assert headroom(record, 6.0)["headroom"] == 5.0
    assert "headroom" not in headroom({"source": "data"}, 6.0)
