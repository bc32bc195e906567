"""Job specs and the Ray Jobs submitter (driver side): one Ray job per language run.

A spec (``jobs/*.yaml``) names everything a run needs::

    name: splade-python              # job name prefix; {language} is filled in
    languages: [python]              # one job per language ("all" in one job: languages: [all])
    preset: development
    model_type: splade
    base_model: code
    workers: 8
    gpus_per_worker: 1
    zero: 2
    data: s3://my-bucket/cornstack   # the S3 mirror: a cluster never reads the hub during training
    output: s3://my-bucket/runs/{name}
    env: [HF_TOKEN, AWS_PROFILE]     # names passed from the submitter's environment, values never logged
    set: ["train.learning_rate=3e-5"]
    pip: []                          # extra packages installed at job start (needs a package index)

Each spec is validated into a full run config before anything is submitted.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_ray.config import PROJECT_ROOT, Config, flag_overrides, load_config, read_yaml_mapping
from sparse_ray.errors import ConfigError, UserError

#: Paths never uploaded with the job's working directory.
EXCLUDES = [".venv", ".git", "runs", "outputs", "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
SPEC_KEYS = {
    "name",
    "languages",
    "preset",
    "model_type",
    "base_model",
    "workers",
    "gpus_per_worker",
    "zero",
    "data",
    "output",
    "env",
    "set",
    "pip",
}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class JobSpec:
    path: str
    name: str
    languages: list[str]
    preset: str = "quick_test"
    model_type: str = "splade"
    base_model: str = "minilm"
    workers: int = 2
    gpus_per_worker: int = 0
    zero: int = 2
    data: str | None = None
    output: str = "runs/{name}"
    env: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)


def load_spec(path: str | Path) -> JobSpec:
    """Parse and check one spec file (keys, types); the run config is checked by ``plan_runs``."""
    path = Path(path)
    raw = read_yaml_mapping(path, "job spec")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{path.name}: unknown key(s) {', '.join(sorted(unknown))}")
    langs = raw.get("languages", [])
    if isinstance(langs, str):
        langs = [langs]
    if not langs:
        raise ConfigError(f"{path.name}: 'languages' is empty")
    if not raw.get("data"):
        raise ConfigError(f"{path.name}: no data location; a cluster run reads an S3 mirror or a path (data: ...)")
    for key in ("env", "set", "pip"):
        if not isinstance(raw.get(key, []), list):
            raise ConfigError(f"{path.name}: '{key}' must be a list")
    return JobSpec(
        path=str(path),
        name=str(raw.get("name", path.stem)),
        languages=[str(x) for x in langs],
        preset=str(raw.get("preset", "quick_test")),
        model_type=str(raw.get("model_type", "splade")),
        base_model=str(raw.get("base_model", "minilm")),
        workers=raw.get("workers", 2),
        gpus_per_worker=raw.get("gpus_per_worker", 0),
        zero=raw.get("zero", 2),
        data=str(raw["data"]),
        output=str(raw.get("output", "runs/{name}")),
        env=[str(x) for x in raw.get("env", [])],
        overrides=[str(x) for x in raw.get("set", [])],
        pip=[str(x) for x in raw.get("pip", [])],
    )


@dataclass
class Run:
    """One job to submit: the validated config and the command line that reproduces it."""

    name: str
    language: str
    spec: JobSpec
    config: Config
    args: list[str]

    @property
    def entrypoint(self) -> str:
        return "python -m sparse_ray.cli train " + " ".join(shlex.quote(a) for a in self.args)


def plan_runs(spec: JobSpec, languages: list[str] | None = None) -> list[Run]:
    """One Run per language (``languages`` narrows the spec's list); each config fully validated."""
    chosen = languages or spec.languages
    if languages and spec.languages != ["all"]:
        missing = [lang for lang in languages if lang not in spec.languages]
        if missing:
            raise ConfigError(f"{Path(spec.path).name} does not list {', '.join(missing)}")
    runs = []
    for lang in chosen:
        name = spec.name.format(language=lang)
        flags = {
            "language": lang,
            "model_type": spec.model_type,
            "base_model": spec.base_model,
            "workers": spec.workers,
            "zero": spec.zero,
            "gpus_per_worker": spec.gpus_per_worker,
            "data": spec.data or "",
            "output": spec.output.format(name=name, language=lang),
        }
        cfg = load_config(spec.preset, flag_overrides(flags, spec.overrides))
        runs.append(
            Run(name=name, language=lang, spec=spec, config=cfg, args=_argv(spec.preset, flags, spec.overrides))
        )
    return runs


def _argv(preset: str, flags: dict[str, Any], overrides: list[str]) -> list[str]:
    """The ``sparse-ray train`` arguments that reproduce ``flags`` and ``overrides`` on the cluster."""
    args = ["--preset", preset]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    for item in overrides:
        args += ["--set", item]
    return args


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runtime_env(run: Run) -> dict[str, Any]:
    """This project as the working directory, chosen variables from the caller's environment."""
    env_vars = {name: os.environ[name] for name in run.spec.env if name in os.environ}
    env: dict[str, Any] = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": env_vars}
    if run.spec.pip:
        env["pip"] = run.spec.pip
    return env


def client(address: str) -> Any:
    """A JobSubmissionClient, or a one-line error when the address cannot be reached."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError depending on the failure
        raise UserError(f"cannot reach the Ray job server at {address}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:200]


def submit(run: Run, jobs: Any, agent_wait_s: float = 300) -> str:
    """Submit one run; returns the job id. Waits up to ``agent_wait_s`` for a new head's job agent
    (a head started from a fresh install took over 90 s to register it: first-time imports)."""
    metadata = {
        "sparse_ray_name": run.name,
        "language": run.language,
        "preset": run.config.preset,
        "model_type": run.config.model.type,
        "spec": os.path.basename(run.spec.path),
        "git_commit": git_commit(),
    }
    submission_id = f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs.submit_job(
                entrypoint=run.entrypoint, runtime_env=runtime_env(run), metadata=metadata, submission_id=submission_id
            )
        except RuntimeError as exc:  # a fresh head answers before its job agent has registered
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise UserError(f"the job server refused {run.name}: {_first_line(exc)}") from None
            time.sleep(2)


def follow(jobs: Any, job_id: str, poll_s: float = 2.0) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    import asyncio

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
    status = str(jobs.get_job_status(job_id).value)
    while status not in TERMINAL:  # logs can close a moment before the status settles
        time.sleep(poll_s)
        status = str(jobs.get_job_status(job_id).value)
    return status


def exit_code(status: str) -> int:
    return 0 if status == "SUCCEEDED" else 1
