"""Lightning multi-process training: two CPU processes (strategy="ddp", gloo) end where one process does on
the same global batches. DDP without find_unused_parameters also fails if any parameter, the key bias
included, left the autograd graph.

Lightning's "ddp" starts the other rank by running this process's command line again, so the two-process run
happens in a child python running this file as a script (a pytest command line cannot be re-run that way).
Each rank records the batches its sampler gave it; one process then trains on their unions.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lstm_attn.modules import LSTMWithAttention

PER_PROCESS_BATCH = 4
STEPS = 4


class RecordBatches(pl.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append([t.clone() for t in batch])


def train(data: TensorDataset, devices: int, batch_size: int, record: RecordBatches | None = None):
    pl.seed_everything(0, verbose=False)
    model = LSTMWithAttention(2, 8, 2, 0.0)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[record] if record else None)
    trainer.fit(model, DataLoader(data, batch_size=batch_size))  # one process: in order, as recorded
    return trainer, model.state_dict()


def joined(batches) -> TensorDataset:
    return TensorDataset(*(torch.cat([b[i] for b in batches]) for i in range(2)))


def test_two_processes_match_one_on_the_same_global_batches(tmp_path):
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    ddp = torch.load(tmp_path / "state.pt", weights_only=True)
    rank0, rank1 = (torch.load(tmp_path / f"batches{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0) == len(rank1) == STEPS

    global_batches = [joined([a, b]) for a, b in zip(rank0, rank1)]
    _, single = train(joined([t.tensors for t in global_batches]), 1, 2 * PER_PROCESS_BATCH)
    pl.seed_everything(0, verbose=False)
    initial = LSTMWithAttention(2, 8, 2, 0.0).state_dict()
    lr = 1e-3
    for name, value in single.items():
        if name == "attention.key.bias":
            # Its gradient is rounding noise (zero in exact arithmetic, in the seed's model too), which Adam
            # scales up to steps of about lr, so its path differs from run to run; that DDP ran at all shows it
            # is in the graph. Adam bounds how far it can have gone.
            assert (ddp[name] - initial[name]).abs().max() <= STEPS * lr * 1.01
            continue
        assert not torch.equal(value, initial[name]), f"{name} was never trained"
        # A thousandth of one Adam step of lr = 1e-3: the gradients agree to float32 rounding (seen: 3e-8).
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")

    # Had the processes not synchronised, rank 0 would have trained on its own batches alone.
    _, unsynchronised = train(joined(rank0), 1, PER_PROCESS_BATCH)
    gap = max((unsynchronised[k] - single[k]).abs().max().item() for k in single)
    assert gap > 1e-4, "the comparison cannot tell a synchronised run from an unsynchronised one"


if __name__ == "__main__":
    g = torch.Generator().manual_seed(3)
    record = RecordBatches()
    trainer, state = train(TensorDataset(torch.randn(64, 12, 2, generator=g), torch.randn(64, 1, generator=g)),
                           devices=2, batch_size=PER_PROCESS_BATCH, record=record)
    out = Path(sys.argv[1])
    torch.save(record.batches, out / f"batches{trainer.global_rank}.pt")
    if trainer.is_global_zero:
        torch.save(state, out / "state.pt")
    # Lightning leaves the process group up; gloo's worker threads still running at interpreter exit abort the
    # process ("terminate called without an active exception", seen on CI), so end it here.
    torch.distributed.destroy_process_group()
