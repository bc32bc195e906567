"""The stall watchdog: which thread it interrupts, and which rank trips first."""

from __future__ import annotations

import threading
import time

import pytest

from sparse_ray.worker.watchdog import COLLECTIVE_GRACE_S, StallError, Watchdog


def _stall_in(
    stage: str, timeout: float, seconds: float, stepped: bool = True
) -> tuple[list[dict], BaseException | None]:
    """In a fresh thread (Ray Train's training thread is not the main one), mark ``stage`` (after
    a finished step if ``stepped``, else right after training began) and spin in Python for
    ``seconds``; return the watchdog's records and what the thread raised."""
    records: list[dict] = []
    raised: list[BaseException] = []

    def train() -> None:
        dog = Watchdog(timeout, rank=1, record=records.append).start()
        dog.beat(step=stepped)
        try:
            with dog.stage_of(stage, "all_gather" if stage == "collective" else ""):
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    time.sleep(0.05)
        except StallError as exc:
            raised.append(exc)
        finally:
            dog.stop()

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    return records, (raised[0] if raised else None)


def test_a_stall_interrupts_the_thread_that_trains_not_the_main_thread():
    records, raised = _stall_in("data", timeout=0.5, seconds=5)
    assert raised is not None, "the training thread ran on past the stall"
    assert str(raised).startswith("rank 1 on ") and "stalled in data: waiting for rows from Ray Data" in str(raised)
    assert [r["stage"] for r in records] == ["data"]
    assert "before the first step" not in str(raised)


def test_a_data_stall_before_the_first_step_says_what_the_first_batch_waits_for():
    records, raised = _stall_in("data", timeout=0.5, seconds=5, stepped=False)
    assert raised is not None and records[0]["message"] == str(raised)
    message = str(raised)
    assert "stalled in data: waiting for rows from Ray Data before the first step" in message
    assert "data.shuffle_buffer" in message and "train.stall_timeout" in message and "\n" not in message


@pytest.mark.parametrize("stage", ["data", "collective"])
def test_a_rank_waiting_in_a_collective_trips_after_the_rank_it_waits_for(stage):
    # both ranks' last steps ended together; the one waiting for the other must not be named first
    started = time.monotonic()
    records, raised = _stall_in(stage, timeout=0.5, seconds=COLLECTIVE_GRACE_S + 3)
    took = time.monotonic() - started
    assert raised is not None and records and records[0]["stage"] == stage
    if stage == "collective":
        assert took > 0.5 + COLLECTIVE_GRACE_S - 0.2, took
        assert records[0]["detail"] == "all_gather"
    else:
        assert took < 0.5 + COLLECTIVE_GRACE_S - 1, took


def test_watched_collectives_are_timed_by_call_and_nested_calls_count_once():
    import types

    dog = Watchdog(0, rank=0)

    def all_reduce(x: float) -> float:
        time.sleep(x)
        return x

    def all_gather(x: float) -> float:  # calls a watched collective itself, as DeepSpeed calls torch
        return inner.all_reduce(x)

    inner = types.SimpleNamespace(all_reduce=all_reduce)
    outer = types.SimpleNamespace(all_gather=all_gather)
    dog.watch_collectives(inner, outer)
    inner.all_reduce(0.05)
    outer.all_gather(0.1)
    with dog.stage_of("data"):
        time.sleep(0.02)
    # the all_reduce nested in the all_gather counts as the all_gather's (else it would be ≥ 0.15)
    assert 0.05 <= dog.by_call["collective:all_reduce"] < 0.15
    assert dog.by_call["collective:all_gather"] >= 0.1
    assert dog.spent["collective"] == pytest.approx(
        dog.by_call["collective:all_reduce"] + dog.by_call["collective:all_gather"]
    )
    assert "data" not in {key.split(":")[0] for key in dog.by_call}  # only marks with a detail are split
