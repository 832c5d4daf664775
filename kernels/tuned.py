"""Autotuning winners measured on a GPU, pinned per (kernel, GPU architecture, dtype, launch class).

Where a row matches, the autotuner takes that config without benchmarking the table (kernels/_common.autotuners);
elsewhere (other GPUs, dtypes or head dims) it tunes as usual. Rows come only from a real run of
`python benchmarks/tune_triton.py --out benchmarks/results/` on that GPU, which prints them in this form:
    ("attention_fwd", "sm_90", "bfloat16", (64, False)): {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
The launch classes are those of the kernels' tables: (head-dim block, float32?) for the attention kernels, the
head-dim block for softmax_pool. No GPU run has tuned these kernels yet, so the table is empty.
"""

PINNED: dict[tuple, dict] = {}
