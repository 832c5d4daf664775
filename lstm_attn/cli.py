"""The `lstm-attn` command: one subcommand per job, each living in its own module.

Parse first, import after. Each subcommand's options come from a module that provides `add_arguments(parser)` and
imports neither torch nor Lightning, so `lstm-attn --help`, `lstm-attn COMMAND --help`, `--version` and any option
refused while parsing answer at once. The module that does the work (its `run(args) -> int`) is imported only once
the command line parses: `lstm-attn train` never pays for matplotlib, and `lstm-attn report` never for Lightning.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from lstm_attn import __version__
from lstm_attn.extras import MissingExtra


class Command(NamedTuple):
    options: str  # "module:function", the function adding the options to a parser; the module imports no torch
    implementation: str  # the module with run
    help: str


COMMANDS = {
    "train": Command("lstm_attn.training.options:add_arguments", "lstm_attn.training.command",
                     "train LSTMWithAttention on a real time series (built-in or a CSV)"),
    "export": Command("lstm_attn.export:add_arguments", "lstm_attn.export",
                      "export a trained checkpoint to one self-contained ONNX file"),
    "bench": Command("lstm_attn.bench.options:add_bench_arguments", "lstm_attn.bench.sweep",
                     "benchmark every backend and peer over a sweep of shapes; write JSON"),
    "profile": Command("lstm_attn.bench.options:add_profile_arguments", "lstm_attn.bench.profile",
                       "split one forward+backward call's time into host and device time, and name the heaviest "
                       "kernels"),
    "report": Command("lstm_attn.bench.report:add_arguments", "lstm_attn.bench.report",
                      "merge benchmark JSON files into a markdown table and plots"),
}


class _Parser(argparse.ArgumentParser):
    """An option refused while parsing is one line, as every other error of the commands: argparse's usage block
    before it (a screenful for train) would bury it; --help has the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="lstm-attn", description="Train, export and benchmark lstm_attn's "
                                  "LSTMWithAttention. `lstm-attn COMMAND --help` lists a command's options.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        module, function = command.options.split(":")
        add_arguments = getattr(importlib.import_module(module), function)
        add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return importlib.import_module(COMMANDS[args.command].implementation).run(args)
    except MissingExtra as exc:
        print(f"lstm-attn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
