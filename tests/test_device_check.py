"""benchmarks/device_check.sh's DRY_RUN: each stage's plumbing on a machine without a GPU, where a GPU lease would
otherwise find it broken: the file names (GPU, date, commit), the imports, the workloads' and plan sweeps' arguments,
stage 1's two test selections (together the GPU suite, once each), stage 3's report over fake rows and its packing,
at most 8 files back, a failing step reported through its log, and the time budget: the cold worst case and a warm
machine's minimums within BUDGET_S."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.sh"
COMMIT = "0123456789abcdef"


def _env(python: str, env: dict) -> dict:
    return {**os.environ, "DRY_RUN": "1", "PYTHON": python, "LSTM_ATTN_GIT_COMMIT": COMMIT, **env}


def dry_run(stage: str, out: Path, python: str = sys.executable, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), stage, str(out)], env=_env(python, env), capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Every stage's dry run, side by side: most of each is Python starting, which the others can overlap."""
    runs = {}
    for stage in STAGES:
        out = tmp_path_factory.mktemp(stage)
        runs[stage] = (out, subprocess.Popen(["bash", str(SCRIPT), stage, str(out)], env=_env(sys.executable, {}),
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return {stage: (out, proc.communicate(timeout=900)[0], proc.returncode) for stage, (out, proc) in runs.items()}


def tag_of(out: Path, stage: str) -> str:
    logs = [p.name for p in out.glob(f"{stage}-*.log")]
    assert len(logs) == 1, logs
    tag = logs[0].removeprefix(f"{stage}-").removesuffix(".log")
    assert re.fullmatch(r"cpu-[a-z0-9-]+-\d{4}-\d\d-\d\d-" + COMMIT[:7], tag), tag
    return tag


STAGES = {"stage1": ["build", "pytest-new", "pytest-rest"], "stage2": ["build", "memcheck"],
          "stage3": ["build", "plans", "ncu", "report"]}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_runs_its_plumbing_within_its_budget(stages, stage):
    out, log, status = stages[stage]
    assert status == 0, log[-5000:]
    assert re.search(rf"== time budget of {stage}: 285s; a cold machine .* needs \d+s of minimums, a warm one \d+s",
                     log)
    for name in STAGES[stage]:
        assert re.search(rf"^  {name}: ok \(\d+s\)$", log, re.M), f"step {name} did not pass:\n{log[-3000:]}"
    tag = tag_of(out, stage)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(tag in f for f in files), files
    if stage == "stage1":
        assert "pytest selections:" in log
    if stage == "stage3":
        assert f"summary-{tag}.md" in files
        with tarfile.open(out / f"results-{tag}.tar.gz") as tar:
            names = {Path(n).name for n in tar.getnames()}
        for what in ("lstm", "peers", "model", "scaling", "plan-cuda-flash", "plan-cuda-gemm3xtf32",
                     "plan-triton-matmul", "summary"):
            assert any(n.startswith(f"{what}-") for n in names), (what, sorted(names))


def test_a_step_that_fails_behind_its_log_fails_the_stage(tmp_path):
    """What hid racecheck's and synccheck's failures: a step whose output goes through tee reports its own status."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *device_workloads.py*) echo "workload fails"; exit 3 ;; esac\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    done = dry_run("stage2", out, python=str(python))
    assert done.returncode == 1
    assert "memcheck: FAILED with status 3" in done.stdout
    assert "workload fails" in (out / f"sanitizer-{tag_of(out, 'stage2')}.log").read_text()


def test_a_budget_that_cannot_hold_the_cold_worst_case_is_refused(tmp_path):
    done = dry_run("stage3", tmp_path, BUDGET_S="200")
    assert done.returncode == 1 and "the cold worst case does not fit BUDGET_S=200" in done.stdout


def test_unknown_parts_are_refused(tmp_path):
    done = dry_run("stage2", tmp_path, PARTS="memcheck,initcheck")
    assert done.returncode == 2 and "stage2 has no part 'initcheck'" in done.stderr
