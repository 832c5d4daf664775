"""The `lstm-attn` command: one subcommand per job, each living in its own module.

Each module named below provides `add_arguments(parser)` and `run(args) -> int`; it is imported only when
its subcommand runs, so `lstm-attn train` never pays for matplotlib and `lstm-attn report` never for Lightning.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("lstm_attn.training.command", "train LSTMWithAttention on a real time series (built-in or a CSV)"),
    "export": ("lstm_attn.export", "export a trained checkpoint to ONNX"),
    "bench": ("lstm_attn.bench.sweep", "benchmark every backend and peer over a sweep of shapes; write JSON"),
    "profile": ("lstm_attn.bench.profile", "split one forward+backward call's time into host and device time, "
                "and name the heaviest kernels"),
    "report": ("lstm_attn.bench.report", "merge benchmark JSON files into a markdown table and plots"),
    "kernels": ("lstm_attn.bench.kernels", "registers, shared memory, spills and blocks per SM of every CUDA kernel "
                "in the built extension, read from the binary (no GPU needed)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lstm-attn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage or the unknown-command error and exits
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"lstm-attn {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    return module.run(command_parser.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main())
