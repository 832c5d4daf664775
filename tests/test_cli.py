"""The installed `lstm-attn` command as a user meets it, in subprocesses: --help and --version at once without torch,
every refused input one line (exit 2, the argument named, no traceback, nothing written), and the package's
license."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lstm_attn import cli
from lstm_attn.backends import BACKENDS
from lstm_attn.training import options

LSTM_ATTN = shutil.which("lstm-attn", path=str(Path(sys.executable).parent))
# conftest.py sets TRITON_INTERPRET for this process; a user's shell has no such thing, and with it Triton would
# run on the CPU, so `--backend triton` would not be refused.
USER_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
HEAVY = ("torch", "pytorch_lightning", "pandas", "matplotlib")


def lstm_attn(*args, cwd) -> subprocess.CompletedProcess:
    assert LSTM_ATTN, f"no lstm-attn entry point beside {sys.executable}: install the package (pip install -e .)"
    return subprocess.run([LSTM_ATTN, *args], cwd=cwd, env=USER_ENV, capture_output=True, text=True, timeout=300)


def lstm_attn_all(argvs, cwd) -> list[subprocess.CompletedProcess]:
    """Several commands at once: each that gets past parsing spends seconds importing torch."""
    procs = [subprocess.Popen([LSTM_ATTN, *argv], cwd=cwd, env=USER_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    done = []
    for argv, proc in zip(argvs, procs):
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess([LSTM_ATTN, *argv], proc.returncode, out, err))
    return done


def assert_one_line_error(done: subprocess.CompletedProcess, command: str, *named: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.args, done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"lstm-attn {command}: error: "), lines[0]
    for name in named:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *([name, "--help"] for name in cli.COMMANDS),
                                  ["train", "--hidden-size", "0"]],
                         ids=lambda argv: " ".join(argv))
def test_help_version_and_parse_errors_import_no_torch(argv):
    code = ("import sys\nfrom lstm_attn import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert "loaded: []" in done.stderr, done.stderr


def test_help_and_version_answer_at_once(tmp_path):
    for argv in (["--help"], ["train", "--help"], ["--version"]):
        started = time.perf_counter()
        done = lstm_attn(*argv, cwd=tmp_path)
        seconds = time.perf_counter() - started
        assert done.returncode == 0, done.stderr
        # Well under a second on a quiet machine; the bound leaves room for a loaded CI runner, and fails the 7 to 9
        # seconds of importing torch and Lightning first.
        assert seconds < 3.0, f"lstm-attn {' '.join(argv)} took {seconds:.1f} s"
    assert done.stdout.strip() == f"lstm-attn {importlib.metadata.version('lstm_attn')}"
    assert "--resume" in lstm_attn("train", "--help", cwd=tmp_path).stdout


@pytest.mark.parametrize("argv, named", [
    (["train", "--hidden-size", "0"], "--hidden-size"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--layers", "0"], "--layers"),
    (["train", "--num-layers", "-1"], "--layers"),
    (["train", "--dropout", "2"], "--dropout"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--window", "0"], "--window"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--seed", "-3"], "--seed"),
    (["train", "--val-fraction", "1"], "--val-fraction"),
    (["train", "--sep", "tabs"], "--sep"),
    (["train", "--accelerator", "tpu"], "--accelerator"),
    (["export", "model.ckpt", "--window", "0"], "--window"),
])
def test_bad_numbers_are_refused_while_parsing(tmp_path, argv, named):
    done = lstm_attn(*argv, "--output" if argv[0] == "train" else "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(done, argv[0], f"argument {named}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_what_cannot_run_here_is_one_line_before_anything_loads(tmp_path, capsys):
    """Refusals that need torch to find out (no GPU for --backend cuda or triton or --accelerator gpu; a --resume
    checkpoint that is corrupt, truncated or no run's), each one line before any data is read or file written. Three
    go through the installed command (no traceback there either), the rest through cli.main, the same code."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --backend cuda and --accelerator gpu can run here")
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, good)
    truncated, corrupt = tmp_path / "truncated.ckpt", tmp_path / "corrupt.ckpt"
    truncated.write_bytes(good.read_bytes()[:1500])
    corrupt.write_bytes(b"\0" * 4096)
    runs = tmp_path / "runs"
    cuda, triton, cut = lstm_attn_all([["train", *argv, "--output", str(runs)] for argv in (
        ["--backend", "cuda"], ["--backend", "triton"], ["--resume", str(truncated)])], cwd=tmp_path)
    assert_one_line_error(cuda, "train", "--backend cuda", "built without CUDA kernels")
    assert_one_line_error(triton, "train", "--backend triton", "not cpu")
    assert_one_line_error(cut, "train", "--resume", "not a torch checkpoint", "corrupt, truncated")

    for argv, named in ((["--accelerator", "gpu"], ("--accelerator gpu", "no CUDA GPU")),
                        (["--resume", str(corrupt)], ("--resume", "not a torch checkpoint", "corrupt, truncated")),
                        (["--resume", "last"], ("--resume last", "no run under")),
                        (["--resume", str(good)], ("--resume", "not a checkpoint of `lstm-attn train`"))):
        assert cli.main(["train", *argv, "--output", str(runs)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lstm-attn train: error: ") and err.count("\n") == 1, err
        assert all(name in err for name in named), (named, err)
    assert not runs.exists()


def test_the_light_option_lists_match_the_modules_that_run_them():
    """The options modules spell out names that the heavy modules define, so as not to import them for --help."""
    from lstm_attn.bench import cases, lstm_rows, model_step, options as bench, scaling

    assert options.BACKENDS == BACKENDS
    assert tuple(cases.DTYPES) == bench.OP_DTYPES and tuple(cases.PROVIDERS) == bench.OP_PROVIDERS
    assert tuple(model_step.DTYPES) == bench.MODEL_DTYPES
    assert bench.CASES == (cases.CASE, lstm_rows.CASE, model_step.CASE, scaling.CASE)


def test_the_package_has_a_license():
    metadata = importlib.metadata.metadata("lstm_attn")
    assert metadata["License-Expression"] == "BSD-3-Clause"
    license_file = Path(__file__).resolve().parent.parent / "LICENSE"
    assert license_file.read_text().startswith("BSD 3-Clause License")
    assert "BSD-3-Clause" in (license_file.parent / "README.md").read_text()
