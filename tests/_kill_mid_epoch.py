"""`python tests/_kill_mid_epoch.py EPOCH ARGS...` runs `lstm-attn ARGS...` and kills it with SIGKILL half-way
through epoch EPOCH (0-based), after the optimizer step of that epoch's middle batch: a run that dies part-way through
an epoch, at a point a test can name (tests/test_training.py). Nothing in the package knows of it."""

import os
import signal
import sys

import pytorch_lightning as pl

from lstm_attn import cli
from lstm_attn.training import command


class KillMidEpoch(pl.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches // 2:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    epoch, argv = int(sys.argv[1]), sys.argv[2:]
    train = command.train

    def train_then_die(*args, callbacks=(), **kwargs):
        return train(*args, callbacks=[*callbacks, KillMidEpoch(epoch)], **kwargs)

    command.train = train_then_die
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
