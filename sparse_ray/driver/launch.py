"""``sparse-ray train`` on the driver: resolve data, start or join Ray, fit, publish, evaluate.

Order matters for users: everything that can fail because of their input (config, data location,
base model) fails before Ray starts. The driver never holds the dataset: it streams one count pass,
hands the lazy training plan to Ray Train, and takes only the hold-out rows it evaluates on.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

from sparse_ray import rundir
from sparse_ray.config import Config, loadable_model
from sparse_ray.console import config_table, console, data_table, summary_table
from sparse_ray.data import pipeline
from sparse_ray.data.plan import Plan, plan_steps
from sparse_ray.data.sources import resolve_sources
from sparse_ray.driver import capacity, hub, memory, teacher, tracking
from sparse_ray.driver.cluster import connect
from sparse_ray.driver.fit import fit, worker_plan
from sparse_ray.errors import ConfigError
from sparse_ray.evaluate import eval_point


def compare(cfg: Config, base_model: str, model_dir: str, holdout: list[dict[str, Any]]) -> dict[str, Any]:
    """Hold-out retrieval and sparsity of the trained model next to the same model untrained."""
    import transformers

    from sparse_ray.evaluate import evaluate
    from sparse_ray.model import load_sparse_encoder, model_from_config
    from sparse_ray.windows import DocumentWindows, use_document_windows

    transformers.set_seed(cfg.train.seed)
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars, twice per run
    untrained = model_from_config(cfg.model, base_model)
    use_document_windows(untrained, DocumentWindows.of(cfg.model))  # read as the saved model reads
    trained = load_sparse_encoder(model_dir)
    return {"untrained": evaluate(untrained, holdout), "trained": evaluate(trained, holdout)}


def losses(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Loss, its parts and the learning rate at each logging step."""
    keep = ("step", "loss", "learning_rate")
    return [{k: v for k, v in e.items() if k in keep or k.endswith("_loss")} for e in history if "loss" in e]


def eval_history(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Hold-out metrics of every evaluation during training."""
    return [eval_point(e, e.get("step", 0)) for e in history if any(k.startswith("eval_") for k in e)]


def resumes(attempts: list[dict[str, Any]], failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every restart of the worker group after the first start: when, old and new size, the step it
    resumed from, why, and the rows it skipped or repeated in the epoch (replayed by the new group
    minus trained by the old; 0 and 0 by design, ``data/slots.py``)."""
    out = []
    for old, new in itertools.pairwise(attempts):
        if "workers" not in new:  # attempts recorded before elastic runs
            continue
        failed = [f for f in failures if old["started"] <= f["time"] <= new["started"]]
        if new.get("from") == "preemption":
            reason = "preemption (checkpoint on the drain notice)"
        elif failed:
            reason = "failure: " + "; ".join(sorted({e for f in failed for e in f["errors"].values()}))[:300]
        else:
            reason = "capacity added" if new["workers"] > old.get("workers", 0) else "restart"
        diff = new.get("rows_replayed", 0) - new.get("rows_trained_in_epoch", 0)
        out.append(
            {
                "time": new["started"],
                "old_workers": old.get("workers"),
                "new_workers": new["workers"],
                "step": new["from_step"],
                "checkpoint": new.get("from"),
                "reason": reason,
                "rows_skipped": max(diff, 0),
                "rows_repeated": max(-diff, 0),
            }
        )
    return out


def plan_line(cfg: Config, plan: Plan) -> str:
    line = (
        f"plan: {plan.max_steps} steps = {cfg.train.epochs} epoch(s) × {plan.steps_per_epoch} steps; "
        f"{plan.rows_per_slot} rows per data slot, global batch {cfg.global_batch}"
    )
    if long := cfg.long_steps(plan.max_steps):
        line += f"; the last {long} steps at {cfg.train.long_seq_length} tokens per text"
    if cfg.elastic:
        sizes = ", ".join(map(str, cfg.worker_sizes))
        line += f"; elastic: {sizes} workers ({cfg.slots} data slots of {cfg.slot_batch} rows)"
    if len(cfg.data.languages) > 1:
        steps = ", ".join(f"{lang} {v['steps']}" for lang, v in plan.languages.items())
        line += f"; steps per language ({cfg.data.language_sampling}): {steps}"
    return line


def memory_plan(cfg: Config, base_model: str) -> memory.MemoryPlan | None:
    """Print the per-GPU memory plan of a GPU run (and a warning when the batch does not fit)."""
    if not cfg.cluster.gpus_per_worker:
        return None
    try:
        shape = memory.model_shape(base_model, cfg.model.type)
    except ConfigError as exc:
        console.print(f"memory plan skipped: {exc}")
        return None
    gpu_plan = memory.plan(cfg, shape, *memory.budget(cfg, capacity.alive_nodes()))
    for line in memory.lines(gpu_plan):
        console.print(line, soft_wrap=True)
    if warn := memory.warning(gpu_plan):
        console.print(warn, style="yellow", soft_wrap=True)
    return gpu_plan


def language_splits(
    cfg: Config, per_language: dict[str, Any], plan: Plan
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Per language: the lazy training rows the plan uses, and up to ``eval_queries`` hold-out rows."""
    k = cfg.data.num_negatives
    train_ds, holdouts = {}, {}
    for lang, ds in per_language.items():
        rows = plan.languages[lang]["rows_per_slot"] * plan.slots
        if rows:
            train_ds[lang] = pipeline.split_rows(ds, "train", k, pipeline.scores_as_label(cfg)).limit(rows)
            if cfg.data.batch_blocks:  # one block per slot and step (see DataConfig.batch_blocks)
                train_ds[lang] = train_ds[lang].repartition(rows // plan.slot_batch)
        if cfg.data.eval_queries:
            holdouts[lang] = pipeline.split_rows(ds, "holdout", k).limit(cfg.data.eval_queries).take_all()
    return train_ds, holdouts


def language_report(plan: Plan, metrics: dict[str, Any], cfg: Config) -> dict[str, dict[str, int]]:
    """Steps and rows per language: planned, and the rows all workers fed in the last attempt."""
    fed = metrics.get("rows_per_language", {})
    return {
        lang: {
            "steps": v["steps"] * cfg.train.epochs,
            "rows_planned": v["steps"] * cfg.train.epochs * cfg.global_batch,
            "rows_fed_last_attempt": int(fed.get(lang, 0)),
        }
        for lang, v in plan.languages.items()
    }


def train(
    cfg: Config, dry_run: bool = False, resume: bool = False, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """The whole run (see the module docstring); returns what it writes to ``run.json``.

    With an output that already holds this run (same config), training resumes from the run's last
    checkpoint; ``resume=True`` insists that there is one. ``callbacks``: more Ray Train callbacks.
    """
    started = time.perf_counter()
    console.print(config_table(cfg.to_dict()))
    tracking.check(cfg)
    repo = hub.check(cfg)
    sources = resolve_sources(cfg)
    base_model = loadable_model(cfg.model.base)
    teacher_model = teacher.load(cfg)
    mode = "dry-run" if dry_run else rundir.claim_output(cfg.to_dict(), cfg.output, resume)
    if mode == "finished":
        console.print(f"{cfg.output} already holds this run, finished ({rundir.RUN_JSON}); nothing to do")
        return rundir.read_run(cfg.output)
    if mode == "resume":
        console.print(f"resuming the run in {cfg.output} from its last checkpoint")
    requested = connect(cfg, dry_run)
    try:
        run = _train_on_cluster(cfg, base_model, teacher_model, sources, dry_run, callbacks, started)
    finally:
        if requested:
            capacity.release()
    if repo and not dry_run:
        run["hub"] = hub.push(run, repo)
        rundir.write_json(cfg.output, rundir.RUN_JSON, run)
        console.print(f"pushed to {run['hub']}")
    return run


def _train_on_cluster(
    cfg: Config,
    base_model: str,
    teacher_model: Any,
    sources: Any,
    dry_run: bool,
    callbacks: list[Any] | None,
    started: float,
) -> dict[str, Any]:
    per_language = pipeline.read_languages(cfg, sources)
    stats = pipeline.count(pipeline.union(per_language))
    console.print(data_table(stats.to_dict()))
    plan = plan_steps(cfg, dict(stats.train))
    console.print(plan_line(cfg, plan))
    gpu_plan = memory_plan(cfg, base_model)
    if dry_run:
        dry = {"config": cfg.to_dict(), "data": stats.to_dict(), "plan": dataclasses.asdict(plan)}
        return {**dry, "memory_plan": gpu_plan.to_dict()} if gpu_plan else dry
    train_ds, holdouts = language_splits(cfg, per_language, plan)
    holdout = [row for rows in holdouts.values() for row in rows]
    # the teacher's pools are sized by each language's rows (per slot: in the same proportion)
    rows = {lang: part["rows_per_slot"] for lang, part in plan.languages.items()}
    teacher_record = teacher.attach(cfg, teacher_model, train_ds, holdout, rows)
    tracking.prepare(cfg)
    plan_for_workers = worker_plan(cfg, plan, base_model, holdout, stats.to_dict())
    result = fit(cfg, train_ds, plan_for_workers, rundir.storage_of(cfg.output), callbacks)
    assert result.checkpoint is not None, "rank 0 reports the final model as a checkpoint"
    model_dir = rundir.publish(result.checkpoint, cfg.output)
    run = _record(cfg, base_model, stats, plan, model_dir, holdout)
    if teacher_record:
        run["teacher"] = teacher.headroom(teacher_record, run["train"]["samples_per_second"])
    if len(holdouts) > 1:
        run["eval_per_language"] = {
            lang: compare(cfg, base_model, model_dir, rows) for lang, rows in holdouts.items() if rows
        }
    run["wall_seconds"] = time.perf_counter() - started
    rundir.write_json(cfg.output, rundir.RUN_JSON, run)
    console.print(summary_table(run))
    return run


def _record(
    cfg: Config, base_model: str, stats: pipeline.DataStats, plan: Plan, model_dir: str, holdout: list[dict]
) -> dict[str, Any]:
    """The run's record (``run.json``) from the published model's files and the hold-out evaluation."""
    history = rundir.training_log(model_dir)
    final = rundir.final_state(model_dir)
    failures = rundir.failures(cfg.output)
    groups = rundir.group_records(rundir.storage_of(cfg.output)) or final["attempts"]
    restarts = resumes(groups, failures)
    return {
        "config": cfg.to_dict(),
        "base_model": base_model,
        "data": stats.to_dict(),
        "plan": dataclasses.asdict(plan),
        "train": final["metrics"],
        "attempts": final["attempts"],
        "groups": groups,
        "failures": failures,
        "resizes": [r for r in restarts if r["old_workers"] != r["new_workers"]],
        "resumes": restarts,
        "rows_skipped_on_resize": sum(r["rows_skipped"] for r in restarts),
        "rows_repeated_on_resize": sum(r["rows_repeated"] for r in restarts),
        "losses": losses(history),
        "eval_history": eval_history(history),
        "languages": language_report(plan, final["metrics"], cfg),
        "eval": compare(cfg, base_model, model_dir, holdout) if holdout else {},
        "versions": rundir.versions(),
        "output": cfg.output,
    }
