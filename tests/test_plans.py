"""The plan tables (lstm_attn/plans.py) and the limits (lstm_attn/limits.py): every input gets a plan that can run it,
a forced plan applies where it can, the numbers the C++ guards read agree with Python's, and no C++ file reads the
environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lstm_attn import limits, plans

ROOT = Path(__file__).resolve().parents[1]
SIZES = [1, 5, 64, 65, 128, 129, 256, 257, 512]


@pytest.mark.parametrize("backend, op", sorted(plans.TABLES))
def test_every_input_gets_a_plan_that_can_run_it(backend, op):
    assert set(plans.TABLES) == set(plans.CAN_RUN)
    assert {row.plan for row in plans.TABLES[(backend, op)]} <= set(plans.CAN_RUN[(backend, op)])
    assert all(row.evidence for row in plans.TABLES[(backend, op)]), "every row names what chose it"
    dtypes = limits.BACKENDS[backend].dtypes
    max_size = limits.BACKENDS[backend].max_head_dim if op == "attention" else None
    for dtype in dtypes:
        for size in SIZES:
            if max_size is not None and size > max_size:
                continue
            for queries, keys in ((1, 1), (15, 300), (16, 4096)):
                # The device is left out: a CPU has no answer to the CUDA LSTM's device question.
                plan = plans.choose(backend, op, dtype, size, queries=queries, keys=keys)
                assert plans.can_run(backend, op, plan, dtype, size), (plan, dtype, size)


def test_a_forced_plan_applies_where_it_can_run(monkeypatch):
    monkeypatch.setitem(plans.FORCED, ("cuda", "attention"), "flash")
    assert plans.choose("cuda", "attention", torch.bfloat16, 64, keys=1024) == "flash"
    with plans.forcing("cuda", "attention", None):
        unforced = plans.choose("cuda", "attention", torch.float32, 64, keys=1024)
    # flash cannot run float32: the table decides there.
    assert plans.choose("cuda", "attention", torch.float32, 64, keys=1024) == unforced
    with plans.forcing("cuda", "attention", "gemm"):
        assert {plans.choose("cuda", "attention", d, h, keys=256)
                for d in limits.GPU_FLOATS for h in (8, 512)} == {"gemm"}
    assert plans.FORCED[("cuda", "attention")] == "flash", "forcing() restores what was forced before"
    with pytest.raises(ValueError, match="cuda lstm has no plan 'flash'"):
        with plans.forcing("cuda", "lstm", "flash"):
            pass


def test_the_triton_table_gives_a_single_query_row_the_flash_plan():
    for H in (8, 64, 256, 512):
        assert plans.choose("triton", "attention", torch.bfloat16, H, queries=1, keys=4096) == "flash"
    assert plans.choose("triton", "attention", torch.bfloat16, 512, queries=256, keys=256) == "matmul"


def test_the_environment_forces_a_plan_and_bad_names_are_refused():
    assert plans.variable("cuda", "lstm") == "LSTM_ATTN_PLAN_CUDA_LSTM"
    assert plans._read_forced({"LSTM_ATTN_PLAN_CPU_LSTM": "stepwise"})[("cpu", "lstm")] == "stepwise"
    with pytest.raises(ValueError, match="LSTM_ATTN_PLAN_CUDA_ATTENTION must be one of tiled, flash, gemm, "
                                         "gemm3xtf32; got 'fastest'"):
        plans._read_forced({"LSTM_ATTN_PLAN_CUDA_ATTENTION": "fastest"})
    with pytest.raises(ValueError, match="LSTM_ATTN_CUDA_PLAN was renamed LSTM_ATTN_PLAN_CUDA_ATTENTION"):
        plans._read_forced({"LSTM_ATTN_CUDA_PLAN": "flash"})


def test_why_not_names_the_limit():
    assert plans.why_not("cuda", "attention", "flash", torch.float32, 64) == \
        "plan 'flash' runs bfloat16, float16, not torch.float32"
    assert plans.why_not("cuda", "attention", "flash", torch.bfloat16, 129) == \
        f"plan 'flash' takes H up to {limits.FLASH_MAX_HEAD_DIM}, got H = 129"
    assert plans.why_not("cuda", "lstm", "stepwise", torch.float32, 4096) is None


def test_the_cpp_limits_are_python_s():
    header = (ROOT / "csrc" / "kernel_limits.h").read_text()
    found = dict(re.findall(r"constexpr int (k\w+) = (\d+);", header))
    assert found == {"kMaxHeadDim": str(limits.GPU_MAX_HEAD_DIM), "kFlashMaxHeadDim": str(limits.FLASH_MAX_HEAD_DIM),
                     "kFusedLstmMaxHidden": str(limits.FUSED_LSTM_MAX_HIDDEN)}


def test_no_cpp_file_reads_the_environment_or_writes_a_limit_of_its_own():
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh")]
    assert sources
    for path in sources:
        text = path.read_text()
        assert "getenv" not in text, f"{path.relative_to(ROOT)} reads the environment: plans.py chooses"
        if path.name != "kernel_limits.h":
            assert not re.search(r"constexpr\s+\w+\s+kMaxHeadDim\s*=\s*\d", text), \
                f"{path.relative_to(ROOT)} writes its own head-dim limit instead of csrc/kernel_limits.h's"


def test_auto_follows_the_rows_measured_faster_than_the_reference():
    """backend="auto" takes a backend only where its plan table marks the inputs beats_reference, and every such row
    names the committed result file that shows it."""
    assert plans.beats_reference("cuda", "attention", torch.bfloat16, 128, keys=256)
    assert not plans.beats_reference("cuda", "attention", torch.bfloat16, 128, keys=1024)
    assert plans.beats_reference("cuda", "attention", torch.float32, 64, keys=4096)
    assert not plans.beats_reference("cuda", "attention", torch.float16, 64, keys=256)
    assert not any(plans.beats_reference("triton", "attention", d, 64) for d in limits.GPU_FLOATS)
    assert not plans.beats_reference("cuda", "lstm", torch.float32, 128)
    assert not plans.beats_reference("cuda", "attention", torch.float32, 4096)  # no plan takes it
    for rows in plans.TABLES.values():
        for row in rows:
            if row.beats_reference:
                files = re.findall(r"benchmarks/results/[\w.-]+\.json", row.evidence)
                assert files and all((ROOT / f).is_file() for f in files), row
