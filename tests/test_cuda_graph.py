"""The CUDA-graph training step (lstm_attn.cuda_graph, LSTMWithAttention.use_cuda_graph and `lstm-attn
train --cuda-graph`): the same training as eager steps, and its requirements refused before training."""

import copy
import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lstm_attn import cli
from lstm_attn.modules import LSTMWithAttention
from test_training import FAST, co2_args, co2_csv, run_dir, train  # noqa: F401  (fixtures)


@pytest.mark.parametrize("extra, message", [
    ([], "--cuda-graph needs a CUDA GPU"),
    (["--accelerator", "cpu"], "--cuda-graph needs a CUDA GPU"),
])
def test_cuda_graph_without_a_gpu_is_refused(tmp_path, co2_args, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train(tmp_path, *co2_args, "--cuda-graph", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    (["--precision", "16-mixed"], "--cuda-graph takes --precision 32-true or bf16-mixed, not 16-mixed"),
    (["--devices", "2"], "--cuda-graph trains on one GPU; got --devices 2"),
])
def test_cuda_graph_requirements_are_checked_before_training(tmp_path, co2_args, capsys, monkeypatch, extra,
                                                             message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the checks come before any GPU is touched
    assert train(tmp_path, *co2_args, "--cuda-graph", *extra) == 2
    assert message in capsys.readouterr().err


def test_graphed_model_refuses_a_cpu_batch():
    model = LSTMWithAttention(2, 8, 1, 0.0).use_cuda_graph()
    assert not model.automatic_optimization
    with pytest.raises(RuntimeError, match="needs the model and data on a GPU"):
        model._graphed(model, torch.randn(3, 5, 2), torch.randn(3, 1))


def fit(model, data, precision, steps):
    trainer = pl.Trainer(max_steps=steps, accelerator="gpu", devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(data, batch_size=16))  # 40 rows: batches of 16, 16 and a partial 8
    return trainer


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("backend", ["cuda", "auto"])
def test_graphed_training_equals_eager_training(backend, precision):
    """Seven steps (partial batches included, which run eagerly) from the same weights: the parameters and the
    step count match eager training's with the same fused Adam."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 12, 3), torch.randn(40, 1))
    eager = LSTMWithAttention(3, 32, 2, 0.0, backend=backend)
    graphed = copy.deepcopy(eager).use_cuda_graph()
    eager.configure_optimizers = lambda: torch.optim.Adam(eager.parameters(), lr=1e-3, fused=True)
    trainers = [fit(model, data, precision, steps=7) for model in (eager, graphed)]
    assert trainers[0].global_step == trainers[1].global_step == 7
    for (name, a), (_, b) in zip(eager.named_parameters(), graphed.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.gpu
def test_train_command_with_cuda_graph_matches_the_seed(tmp_path, co2_args, capsys):
    """The issue's check on real data: the graphed run's validation error is the seed's, within TF32's spread."""
    assert train(tmp_path, *co2_args, "--epochs", "2", "--compare", "--cuda-graph", "--accelerator", "gpu",
                 "--backend", "cuda") == 0
    assert "CUDA graph" in capsys.readouterr().out
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["cuda_graph"] is True
    assert summary["val_loss"] == pytest.approx(summary["seed_model"]["val_loss"], rel=5e-2)
