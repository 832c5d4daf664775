"""ONNX export (torch.onnx.export, Lightning's to_onnx, `lstm-attn export`) and checkpoint loading: errors, and the
checkpoints of the seed's class, which hold no hyperparameters."""

import shutil
import subprocess
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lstm_attn import cli, export, reference
from lstm_attn.modules import LSTMWithAttention
from lstm_attn.training.checkpoint import CheckpointError, load_model
from _backends import model_backend_params, require_backend

DYNAMIC_AXES = {"x": {0: "batch", 1: "time"}, "y": {0: "batch"}}
# (batch, time) pairs other than the traced one, T = 1 included: the axes must really be dynamic.
RUN_SHAPES = [(1, 1), (3, 7), (5, 40)]


@pytest.fixture(autouse=True)
def _fresh_lstm_dispatch():
    """torch 2.13's ONNX exporter swaps in an export-friendly aten.lstm kernel by editing the op's py_kernels
    without clearing its dispatch cache, so the second export of any nn.LSTM in a process traces a stale
    kernel and fixes the time axis. Each test here exports once more in the same process: clear that cache.
    (One export per process, as `lstm-attn export` does, never meets it.)"""
    getattr(torch.ops.aten.lstm.input, "_dispatch_cache", {}).clear()


def assert_onnx_reproduces(model, path, input_size):
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    custom = {node.domain for node in graph.graph.node} - {"", "ai.onnx"}
    assert not custom, f"nodes from custom domains {custom}: the graph is not standard ONNX"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, time in RUN_SHAPES:
        x = torch.randn(batch, time, input_size)
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"batch={batch} time={time}")


@pytest.mark.parametrize("backend, device", [p for p in model_backend_params() if p.values[1] == "cpu"])
def test_torch_onnx_export_gives_standard_ops_with_dynamic_axes(tmp_path, backend, device):
    require_backend(backend, device)
    torch.manual_seed(0)
    model = LSTMWithAttention(3, 16, 2, 0.1, backend=backend).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, 9, 3),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes=DYNAMIC_AXES)
    assert_onnx_reproduces(model, path, 3)


def test_export_keeps_the_standard_lstm_where_the_model_runs_lstm_attn_lstm(tmp_path, monkeypatch):
    """A backend with fused LSTM kernels (cuda; the CPU stands in here) runs the LSTM through lstm_attn.lstm, but
    an export traces the nn.LSTM submodule: the file holds ONNX's LSTM op."""
    torch.manual_seed(0)
    model = LSTMWithAttention(3, 16, 2, 0.1, backend="cpu").eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, 9, 3),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes=DYNAMIC_AXES)
    assert "LSTM" in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert_onnx_reproduces(model, path, 3)


def test_lightning_to_onnx(tmp_path):
    torch.manual_seed(0)
    model = LSTMWithAttention(2, 8, 1, 0.0).eval()
    path = tmp_path / "model.onnx"
    model.to_onnx(path, torch.randn(2, 5, 2), input_names=["x"], output_names=["y"], dynamic_axes=DYNAMIC_AXES)
    assert_onnx_reproduces(model, path, 2)


def lightning_checkpoint(model, path):
    """A real Trainer checkpoint after one optimizer step on random data."""
    data = TensorDataset(torch.randn(8, 6, model.lstm.input_size), torch.randn(8, 1))
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return lightning_checkpoint(LSTMWithAttention(2, 8, 2, 0.0), tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def test_export_command_writes_a_checked_onnx_file(tmp_path, checkpoint, capsys):
    out = tmp_path / "exported.onnx"
    assert cli.main(["export", str(checkpoint), "-o", str(out), "--window", "4"]) == 0
    assert "onnxruntime reproduces the model" in capsys.readouterr().out
    model = load_model(checkpoint)
    reloaded = LSTMWithAttention.load_from_checkpoint(checkpoint, weights_only=True)
    for name, value in reloaded.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert_onnx_reproduces(model, out, 2)


class NotATensor:
    pass


@pytest.mark.parametrize("make, message", [
    (lambda p, ckpt: p, "does not exist"),
    (lambda p, ckpt: p.write_bytes(ckpt.read_bytes()[:2000]) and p, "not a torch checkpoint.*corrupt, truncated"),
    (lambda p, ckpt: p.write_text("week,co2\n1,315.0\n") and p, "not a torch checkpoint"),
    (lambda p, ckpt: torch.save(LSTMWithAttention(2, 8, 2, 0.0).state_dict(), p) or p, "has no 'state_dict'"),
    (lambda p, ckpt: torch.save({"state_dict": {}, "extra": NotATensor()}, p) or p, "weights_only loading refused"),
    (lambda p, ckpt: torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}}, p) or p,
     "no hyperparameters of LSTMWithAttention, and the weights are not LSTMWithAttention's"),
    (lambda p, ckpt: torch.save({**torch.load(ckpt, weights_only=True),
                                 "hyper_parameters": {"input_size": 2, "hidden_size": 9, "num_layers": 2,
                                                      "dropout": 0.0}}, p) or p, "do not fit LSTMWithAttention"),
], ids=["missing", "truncated", "csv", "plain-state-dict", "pickled-object", "other-model", "wrong-size"])
def test_bad_checkpoints_are_clear_errors(tmp_path, checkpoint, capsys, make, message):
    path = make(tmp_path / "bad.ckpt", checkpoint)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    assert cli.main(["export", str(path)]) == 2
    assert "lstm-attn export: error:" in capsys.readouterr().err
    assert not path.with_suffix(".onnx").exists()


def test_a_seed_checkpoint_loads_with_its_sizes_read_from_the_weights(tmp_path, capsys):
    """The seed's class saves no hyperparameters: input, hidden and output sizes and the layer count come from the
    weights' shapes; dropout, which they do not hold, is 0.0 with a warning naming it, or whatever is given."""
    torch.manual_seed(0)
    path = lightning_checkpoint(reference.LSTMWithAttention(2, 8, 2, 0.0), tmp_path / "seed.ckpt")
    seed_weights = torch.load(path, weights_only=True)["state_dict"]
    with pytest.warns(UserWarning, match="records no dropout.*0.0 assumed"):
        model = LSTMWithAttention.load_from_checkpoint(path, weights_only=True)
    assert (model.hparams.input_size, model.hparams.hidden_size, model.hparams.num_layers,
            model.hparams.output_size, model.hparams.dropout) == (2, 8, 2, 1, 0.0)
    for name, value in seed_weights.items():
        assert torch.equal(model.state_dict()[name], value), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropout given: nothing left to say
        assert LSTMWithAttention.load_from_checkpoint(path, weights_only=True, dropout=0.25).hparams.dropout == 0.25
    assert load_model(path).hparams.hidden_size == 8  # the command line's loader: the same inference
    assert cli.main(["export", str(path), "-o", str(tmp_path / "seed.onnx")]) == 0
    assert "onnxruntime reproduces the model" in capsys.readouterr().out


def run_onnx(path, model, batches, lengths):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in batches:
        for time in lengths:
            x = torch.randn(batch, time, model.hparams.input_size)
            (got,) = session.run(None, {"x": x.numpy()})
            with torch.no_grad():
                np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg=f"batch={batch} time={time}")


@pytest.mark.parametrize("window", [export.DEFAULT_WINDOW])
def test_export_runs_every_length_whatever_the_hidden_size(tmp_path, window):
    """A hidden size equal to the traced length made torch.export's file fail beyond that length (onnxruntime:
    "Shape mismatch attempting to re-use buffer"); the three exports share one process, where a second export used
    to trace a fixed time axis."""
    for hidden in (window - 1, window, window + 1):
        torch.manual_seed(hidden)
        model = LSTMWithAttention(2, hidden, 2, 0.0).eval()
        path = export.export(model, tmp_path / f"h{hidden}.onnx", window)
        run_onnx(path, model, batches=(1, 4), lengths=(1, 2, window, 3 * window))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"h{h}.onnx" for h in (window - 1, window, window + 1)]


def test_the_exported_file_alone_loads_elsewhere(tmp_path):
    """`lstm-attn export` writes one self-contained file (no model.onnx.data beside it), which loads when copied
    alone; the hidden size is the traced length, the case that used to fail."""
    from test_cli import LSTM_ATTN, USER_ENV

    torch.manual_seed(0)
    model = LSTMWithAttention(1, export.DEFAULT_WINDOW, 2, 0.0)
    ckpt = lightning_checkpoint(model, tmp_path / "run" / "model.ckpt")
    done = subprocess.run([LSTM_ATTN, "export", str(ckpt)], env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "one self-contained file" in done.stdout and "onnxruntime reproduces the model" in done.stdout
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.ckpt", "model.onnx"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ckpt.with_suffix(".onnx"), elsewhere)
    run_onnx(elsewhere / "model.onnx", load_model(ckpt), batches=(2,), lengths=(1, 3 * export.DEFAULT_WINDOW))


def test_a_failed_export_leaves_no_file(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(export, "max_abs_difference", lambda model, path, lengths: (0.5, (3, 48)))
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["export", str(checkpoint), "-o", str(out / "model.onnx")]) == 1
    err = capsys.readouterr().err
    assert "differs from the model's by 0.5 at batch 3, 48 steps" in err and err.count("\n") == 1, err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_torch_export_with_a_dynamic_batch(strict):
    """torch.export of the model for deployment: the batch dynamic, the window length fixed at the exported one (on a
    CPU, PyTorch's LSTM decomposition specializes the time axis). The program reproduces the model at other batch
    sizes, the LSTM and attention in its graph."""
    torch.manual_seed(0)
    model = LSTMWithAttention(3, 16, 2, 0.0).eval()
    program = torch.export.export(model, (torch.randn(2, 9, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  strict=strict)
    for batch in (1, 5):
        x = torch.randn(batch, 9, 3)
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-6, atol=1e-6)
