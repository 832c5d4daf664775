"""lstm_attn's benchmark suite: `lstm-attn bench` (sweep.py) measures, `lstm-attn report` (report.py) compares.

cases.py (the op) and model_step.py (the seed's training step beside ours) say what is measured: providers,
inputs, FLOP/byte models. group.py runs one shape's candidates side by side: parity.py refuses a wrong result
before anything is timed, timing.py times, ceilings.py measures the device's own limits, env.py records where
it ran, and schema.py is the one JSON format of every result file.
"""
