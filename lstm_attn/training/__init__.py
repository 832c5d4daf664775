"""Training LSTMWithAttention with Lightning: the `lstm-attn train` command (command.py), the Trainer it
builds and the evaluation against naive forecasts (fit.py), and checkpoint loading with clear errors
(checkpoint.py)."""
