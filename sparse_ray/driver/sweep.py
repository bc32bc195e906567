"""``sparse-ray sweep``: Ray Tune runs every trial as a full ``sparse-ray train`` run.

Trials are the cross product of ``--grid`` values, or ``--samples`` seeded random draws of
``--random`` distributions (``loguniform(a,b)``, ``uniform(a,b)``), or both (every draw at every
grid point). A trial is its overrides; its output is ``DIR/trials/<id>`` (id from the overrides),
so the same command again finds what is done: a finished trial has ``run.json``, a trial the
scheduler stopped has ``stopped.json``, and neither is submitted again. Failed trials are counted
and retried by the next invocation.

Inside Tune's function trainable (0.01 CPU: the Train workers and Ray Data hold the resources) the
trial calls ``launch.train`` — the same data, checkpoints and evaluation code as ``sparse-ray train``
— with a Ray Train callback that forwards every hold-out evaluation to Tune, where ASHA
(``--scheduler asha``) stops trials that trail on nDCG@10 at a rung.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_ray.config import Config
from sparse_ray.errors import ConfigError, UserError

RUN_JSON, STOPPED_JSON = "run.json", "stopped.json"
METRIC = "ndcg@10"
_DIST = re.compile(r"^(loguniform|uniform)\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)$")


@dataclass(frozen=True)
class SweepSpec:
    """One sweep, as the command line gives it (validated by :func:`trials`)."""

    #: preset name or YAML path every trial starts from
    preset: str
    #: overrides every trial shares (``key=value``; language, data, model type, …)
    overrides: tuple[str, ...]
    #: ``key → values`` crossed into trials
    grid: dict[str, list[str]] = field(default_factory=dict)
    #: ``key → (distribution, low, high)`` drawn ``samples`` times (seeded by ``seed``)
    random: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    samples: int = 0
    seed: int = 0
    #: ``asha`` (stop trailing trials early on nDCG@10) or ``fifo`` (run every trial to the end)
    scheduler: str = "asha"
    #: trials at once
    max_concurrent: int = 1
    #: Ray Train workers of each trial
    workers_per_trial: int = 1
    #: where the sweep lives: trials/, tune/, sweep.json, sweep.csv, pareto.png, best/
    output: str = "runs/sweep"
    #: the directory relative paths (preset, data, base model) mean: the caller's, not the trial's
    cwd: str = field(default_factory=os.getcwd)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["train.x=1e-5,3e-5", ...]`` → ``{"train.x": ["1e-5", "3e-5"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--grid {item!r}: write KEY=V1,V2,...")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def parse_random(items: list[str]) -> dict[str, tuple[str, float, float]]:
    """``["train.x=loguniform(1e-6,1e-3)"]`` → ``{"train.x": ("loguniform", 1e-6, 1e-3)}``."""
    out: dict[str, tuple[str, float, float]] = {}
    for item in items:
        key, _, spec = item.partition("=")
        parsed = _distribution(spec.strip())
        if not key or parsed is None:
            raise UserError(f"--random {item!r}: write KEY=loguniform(LOW,HIGH) or KEY=uniform(LOW,HIGH), LOW < HIGH")
        out[key.strip()] = parsed
    return out


def _distribution(spec: str) -> tuple[str, float, float] | None:
    match = _DIST.match(spec)
    if match is None:
        return None
    try:
        low, high = float(match.group(2)), float(match.group(3))
    except ValueError:
        return None
    if not low < high or (match.group(1) == "loguniform" and low <= 0):
        return None
    return match.group(1), low, high


def trials(spec: SweepSpec) -> list[dict[str, str]]:
    """Every trial's overrides, in a fixed order (the same spec gives the same trials)."""
    if spec.max_concurrent < 1 or spec.workers_per_trial < 1:
        raise UserError("--max-concurrent and --workers-per-trial must be ≥ 1")
    if spec.scheduler not in ("asha", "fifo"):
        raise UserError(f"--scheduler {spec.scheduler!r}: choose asha or fifo")
    if spec.random and spec.samples < 1:
        raise UserError("--random needs --samples N (N ≥ 1)")
    points = [dict(zip(spec.grid, values, strict=True)) for values in itertools.product(*spec.grid.values())]
    if not spec.random:
        if not spec.grid:
            raise UserError("a sweep needs --grid KEY=V1,V2 or --random KEY=DIST with --samples")
        return points
    rng, draws = random.Random(spec.seed), []
    for _ in range(spec.samples):
        draw = {}
        for key, (dist, low, high) in spec.random.items():
            u = rng.random()
            value = (
                math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
                if dist == "loguniform"
                else low + u * (high - low)
            )
            draw[key] = f"{value:.3g}"
        draws.append(draw)
    return [{**point, **draw} for point in points for draw in draws]


def trial_id(params: dict[str, str]) -> str:
    """A short, stable name: the values, and a hash of the whole override set."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    readable = "-".join(f"{k.rsplit('.', 1)[-1][:12]}{v}" for k, v in sorted(params.items()))
    return f"{re.sub(r'[^A-Za-z0-9.+-]', '_', readable)[:60]}-{digest}"


def trial_dir(spec: SweepSpec, params: dict[str, str]) -> Path:
    return Path(spec.output).resolve() / "trials" / trial_id(params)


def trial_state(spec: SweepSpec, params: dict[str, str]) -> str:
    """``finished`` (run.json), ``stopped`` (by the scheduler) or ``pending``."""
    where = trial_dir(spec, params)
    if (where / RUN_JSON).is_file():
        return "finished"
    return "stopped" if (where / STOPPED_JSON).is_file() else "pending"


def _report_base() -> type:
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback


class EvaluationsToTune(_report_base()):  # type: ignore[misc]
    """Forward rank 0's hold-out evaluations (not its checkpoint reports) from Ray Train to Tune."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and METRIC in metrics[0]:
            super().after_report(run_context, metrics, None)


def final_point(run: dict[str, Any]) -> dict[str, Any]:
    """What a finished trial reports last: the hold-out evaluation of its published model."""
    trained = run.get("eval", {}).get("trained", {})
    point = {k: trained.get(k) for k in (METRIC, "mrr@10", "query_active_dims", "corpus_active_dims", "avg_flops")}
    return {**point, "step": run["plan"]["max_steps"], "final": 1}


def trial_config(spec: SweepSpec, params: dict[str, str]) -> Config:
    """The validated config of the trial ``params`` (``ConfigError`` for a bad key or value)."""
    from sparse_ray.config import load_config

    overrides = [*spec.overrides, *(f"{k}={v}" for k, v in params.items())]
    out = trial_dir(spec, params)
    return load_config(spec.preset, [*overrides, f"cluster.workers={spec.workers_per_trial}", f"output={out}"])


def check(spec: SweepSpec) -> list[dict[str, str]]:
    """Every trial, each config validated before Ray starts: a bad key or value in ``--grid`` or
    ``--random`` is one line naming the trial, not a sweep of failed trials."""
    points = trials(spec)
    for params in points:
        try:
            trial_config(spec, params)
        except ConfigError as exc:
            raise ConfigError(f"trial {trial_id(params)}: {exc}") from None
    return points


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: one full training run with the trial's overrides."""
    from ray import tune

    from sparse_ray.driver.launch import train

    spec: SweepSpec = config["spec"]
    params: dict[str, str] = config["params"]
    os.chdir(spec.cwd)  # Tune starts trainables in the trial's own directory
    run = train(trial_config(spec, params), callbacks=[EvaluationsToTune()])
    tune.report(final_point(run))


def connect(spec: SweepSpec) -> None:
    """Join or start the cluster the trials' config names (validating that config first)."""
    from sparse_ray.config import load_config
    from sparse_ray.driver.cluster import connect as join

    cfg = load_config(spec.preset, [*spec.overrides, f"cluster.workers={spec.workers_per_trial * spec.max_concurrent}"])
    join(cfg)


def run(spec: SweepSpec) -> dict[str, Any]:
    """Run what is pending; returns every trial with its state and metrics (see :func:`collect`)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    all_trials = trials(spec)
    pending = [p for p in all_trials if trial_state(spec, p) == "pending"]
    failed: dict[str, str] = {}
    if pending:
        from sparse_ray.config import load_config

        eval_steps = load_config(spec.preset, list(spec.overrides)).train.eval_steps
        scheduler = (
            ASHAScheduler(time_attr="step", grace_period=max(1, eval_steps), reduction_factor=2, max_t=10**9)
            if spec.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            tune.with_resources(run_trial, {"cpu": 0.01}),  # Tune refuses 0; the trial holds nothing itself
            param_space={"spec": spec, "params": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=scheduler, max_concurrent_trials=spec.max_concurrent
            ),
            run_config=tune.RunConfig(storage_path=str(Path(spec.output).resolve() / "tune"), name="sweep", verbose=0),
        )
        for result in tuner.fit():
            params = result.config["params"]
            if result.error is not None:
                failed[trial_id(params)] = str(result.error).strip().splitlines()[-1][:200]
            elif trial_state(spec, params) == "pending":  # ended before run.json: the scheduler stopped it
                where = trial_dir(spec, params)
                where.mkdir(parents=True, exist_ok=True)
                (where / STOPPED_JSON).write_text(json.dumps({"params": params, "last": result.metrics}, default=str))
    return collect(spec, all_trials, failed, submitted=len(pending))


def collect(
    spec: SweepSpec, all_trials: list[dict[str, str]], failed: dict[str, str], submitted: int
) -> dict[str, Any]:
    """Every trial: id, params, state (finished, stopped, failed, pending), its last metrics."""
    rows = []
    for params in all_trials:
        tid, where, state = trial_id(params), trial_dir(spec, params), trial_state(spec, params)
        metrics: dict[str, Any] = {}
        if state == "finished":
            metrics = final_point(json.loads((where / RUN_JSON).read_text()))
        elif state == "stopped":
            last = json.loads((where / STOPPED_JSON).read_text())["last"]
            metrics = {k: last.get(k) for k in (METRIC, "mrr@10", "query_active_dims", "corpus_active_dims", "step")}
        if tid in failed:
            state, metrics = "failed", {"error": failed[tid]}
        rows.append({"id": tid, "params": params, "state": state, "dir": str(where), **metrics})
    return {
        "spec": {"preset": spec.preset, "overrides": list(spec.overrides), "scheduler": spec.scheduler},
        "submitted": submitted,
        "trials": rows,
    }
