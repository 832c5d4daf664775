"""Whether the machine was busy while a benchmark row was timed: other processes on its cores slow every timing
(a CPU reference measured at 144 ms on a loaded 2-core machine against 0.28 ms on a quiet one), and the figures of
such a row say more about the neighbours than about the code.

Each row of `lstm-attn bench` records the 1-minute load average as its group started and as the row ended
(load_before, load_after). The load average counts every runnable thread, the benchmark's own among them: its torch
threads on a CPU, about one host thread feeding a GPU. A row counts as busy when, at either end, the load less those
own threads exceeds half the cores: then other work held at least half the machine for much of the last minute,
enough to take cores from a timed call. A lighter load (a shell, an editor) stays under it. Files written before rows
recorded the load are "unknown", never busy.
"""

from __future__ import annotations

import os

BUSY_FRACTION = 0.5


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def own_threads(env: dict) -> int:
    return env.get("torch_threads") or 1 if env.get("device_type") == "cpu" else 1


def busy(row: dict, env: dict) -> bool | None:
    """True if other processes kept the machine busy while `row` was timed (the module says how that is judged),
    False if not, None if unknown: no load recorded, or no core count."""
    loads = (row.get("load_before"), row.get("load_after"))
    cores = env.get("cores")
    if any(load is None for load in loads) or not cores:
        return None
    return max(loads) - own_threads(env) > BUSY_FRACTION * cores


def describe(row: dict, env: dict) -> str:
    """The load beside the machine's size, for a flagged row's line."""
    return (f"machine busy: 1-minute load {row['load_before']} to {row['load_after']} on {env['cores']} cores, "
            f"{own_threads(env)} of it this benchmark's threads")
