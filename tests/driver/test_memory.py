"""The per-GPU memory plan: DeepSpeed's own estimators for the states, the SPLADE logits term, the
largest per-device batch that fits, and the warning before anything is submitted."""

from __future__ import annotations

import pytest

from sparse_ray.config import load_config, resolve_base_model
from sparse_ray.driver import memory
from sparse_ray.errors import ConfigError


@pytest.fixture(scope="module")
def minilm_shape() -> memory.ModelShape:
    return memory.model_shape(resolve_base_model("minilm"), "splade")


def gpu_config(*extra: str):
    return load_config("quick_test", ["cluster.workers=64", "cluster.gpus_per_worker=1", *extra])


def test_shape_counts_the_parameters_a_real_model_has(tiny_base):
    from transformers import AutoModelForMaskedLM

    real = AutoModelForMaskedLM.from_pretrained(tiny_base)
    shape = memory.model_shape(tiny_base, "splade")
    assert shape.params == sum(p.numel() for p in real.parameters())  # tied decoder counted once
    assert shape.vocab == real.config.vocab_size and shape.hidden == real.config.hidden_size
    assert memory.model_shape(tiny_base, "inference_free_splade").params == shape.params + shape.vocab


def test_unreadable_base_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config of"):
        memory.model_shape(str(tmp_path / "nothing"), "splade")


def test_states_are_deepspeeds_estimates_per_stage(minilm_shape):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = minilm_shape.params
    _, zero2 = estimate_zero2_model_states_mem_needs(n, 8, 8, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(n, minilm_shape.largest_layer_params, 8, 8, cpu_offload=False)
    assert memory.states_bytes(minilm_shape, 2, 8, 8) == zero2
    assert memory.states_bytes(minilm_shape, 3, 8, 8) == zero3
    assert memory.states_bytes(minilm_shape, 1, 8, 8) == zero2 + 2 * n * (1 - 1 / 64)
    assert memory.states_bytes(minilm_shape, 0, 8, 8) == 16 * n
    plan = memory.plan(gpu_config("cluster.zero=2"), minilm_shape, 80.0, "H100")
    assert plan.gpus == 64 and plan.states == zero2, "64 GPUs plan as 8 nodes × 8"


def test_logits_term_is_batch_seq_vocab_and_the_fused_head_removes_it(minilm_shape):
    stock = memory.plan(gpu_config("model.fused_head=false"), minilm_shape, 80.0, "H100")
    fused = memory.plan(gpu_config("model.fused_head=true"), minilm_shape, 80.0, "H100")
    cfg = gpu_config()
    texts = 2 + cfg.data.num_negatives  # splade encodes query, positive and negatives
    assert stock.logits_per_row == texts * 3 * cfg.model.max_seq_length * minilm_shape.vocab * 2
    assert fused.logits_per_row < stock.logits_per_row / 10
    assert fused.stock_logits_per_row == stock.logits_per_row
    assert fused.largest_batch() > stock.largest_batch() > 0


def test_largest_batch_is_the_edge_of_the_budget(minilm_shape):
    import dataclasses

    plan = memory.plan(gpu_config("model.fused_head=false"), minilm_shape, 24.0, "A10G")
    edge = plan.largest_batch()
    at, over = (dataclasses.replace(plan, batch_size=b) for b in (edge, edge + 1))
    assert at.total <= 24e9 * memory.USABLE < over.total
    assert memory.warning(at) is None
    warn = memory.warning(over)
    assert warn is not None and f"the largest batch per device that fits is {edge}" in warn
    assert any("largest batch per device" in line for line in memory.lines(plan))


def test_budget_from_config_then_the_clusters_gpu_label():
    labelled = [{"CPU": 8.0, "GPU": 8.0, "accelerator_type:H100": 1.0}]
    assert memory.budget(gpu_config(), labelled) == (80.0, "H100")
    assert memory.budget(gpu_config("cluster.gpu_type=A10G"), labelled) == (24.0, "A10G")
    assert memory.budget(gpu_config("cluster.gpu_memory_gb=40"), labelled) == (40.0, "H100")
    unknown = memory.plan(gpu_config(), memory.ModelShape(10, 5, 1, 8, 16), None, None)
    assert "budget unknown" in memory.lines(unknown)[-1] and memory.warning(unknown) is None
    with pytest.raises(ConfigError, match="cluster.gpu_memory_gb must be > 0"):
        gpu_config("cluster.gpu_memory_gb=0")
