"""The step plan of a run: rows per worker, optimizer steps, and the language of every step."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from sparse_ray.config import Config
from sparse_ray.errors import DataError


@dataclass(frozen=True)
class Plan:
    """How many rows each data slot holds, for how many optimizer steps, in which language.

    A global batch is ``slots`` parts of ``slot_batch`` rows, one per data slot; a worker trains
    whole slots (at the full worker count, one each). ``schedule`` names the language of every step
    of one epoch; every rank follows the same schedule, so each global batch (and the in-batch
    negatives gathered across ranks) holds one language only. Later epochs repeat the schedule
    over freshly shuffled rows.
    """

    rows_per_slot: int
    steps_per_epoch: int
    max_steps: int
    languages: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per language: ``rows_per_slot`` and ``steps`` (per epoch) this plan uses."""
    schedule: list[str] = field(default_factory=list)
    slots: int = 1
    """Data slots per global batch (``data.slots``)."""
    slot_batch: int = 0
    """Rows each slot contributes to a global batch."""


def language_weights(available: dict[str, int], strategy: str, temperature: float) -> dict[str, float]:
    """Sampling probability of each language from its available batches (see ``DataConfig``)."""
    if strategy == "round_robin":
        return {lang: 1 / len(available) for lang in available}
    power = 1.0 if strategy == "proportional" else 1.0 / temperature
    raw = {lang: n**power for lang, n in available.items()}
    total = sum(raw.values())
    return {lang: w / total for lang, w in raw.items()}


def language_schedule(available: dict[str, int], steps: int, strategy: str, temperature: float, seed: int) -> list[str]:
    """The language of each of ``steps`` steps; a language is used at most ``available[lang]`` times.

    ``round_robin`` cycles through the languages in order; ``proportional`` and ``temperature`` draw
    each step from the weights of ``language_weights`` (seeded), renormalised over the languages
    that still have batches left.
    """
    left = {lang: n for lang, n in available.items() if n > 0}
    weights = language_weights(left, strategy, temperature)
    rng = random.Random(seed)
    order, out, cursor = list(left), [], 0
    while len(out) < steps and left:
        if strategy == "round_robin":
            while order[cursor % len(order)] not in left:
                cursor += 1
            lang = order[cursor % len(order)]
            cursor += 1
        else:
            names = list(left)
            lang = rng.choices(names, weights=[weights[x] for x in names])[0]
        out.append(lang)
        left[lang] -= 1
        if not left[lang]:
            del left[lang]
    return out


def plan_steps(cfg: Config, train_rows: dict[str, int]) -> Plan:
    """Steps from the sample budget and the global batch; equal rows per slot, whole batches only."""
    batch, slots = cfg.slot_batch, cfg.slots
    batches = {lang: train_rows.get(lang, 0) // slots // batch for lang in cfg.data.languages}
    total_rows = sum(train_rows.values())
    budget = min(total_rows, cfg.data.max_samples or total_rows) // slots // batch
    steps = min(budget, sum(batches.values()))
    if steps == 0:
        rows = f"{cfg.global_batch} rows over all workers"
        raise DataError(f"{total_rows} valid training rows cannot fill one batch ({rows})")
    d = cfg.data
    schedule = language_schedule(batches, steps, d.language_sampling, d.language_temperature, cfg.train.seed)
    used = Counter(schedule)
    languages = {lang: {"rows_per_slot": used[lang] * batch, "steps": used[lang]} for lang in cfg.data.languages}
    return Plan(
        rows_per_slot=steps * batch,
        slots=slots,
        slot_batch=batch,
        steps_per_epoch=steps,
        max_steps=steps * cfg.train.epochs,
        languages=languages,
        schedule=schedule,
    )
