"""Builds lstm_attn._C: the op schemas and C++ CPU kernels always, the CUDA kernels where they can be built.

Environment:
  LSTM_ATTN_CUDA       auto (default): build csrc/cuda/ when torch has CUDA and nvcc is found;
                       0: never; 1: require it (the build fails with the reason if it cannot).
  LSTM_ATTN_HEAD_DIMS  comma-separated head-dim buckets to compile for CUDA (default: all), to trim the build.
  LSTM_ATTN_DEBUG      1: -O0 -g (and -G for device code) for debugging.
  TORCH_CUDA_ARCH_LIST overrides the default CUDA targets, "8.0;9.0".
  MAX_JOBS             parallel compile jobs (ninja).
"""

import glob
import os
import re

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_wanted() -> bool:
    mode = os.environ.get("LSTM_ATTN_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"LSTM_ATTN_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        missing.append("nvcc was not found (set CUDA_HOME)")
    if missing and mode == "1":
        raise SystemExit("LSTM_ATTN_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
    if missing:
        print("lstm_attn: building without CUDA kernels: " + "; ".join(missing))
    return not missing


def _cuda_sources() -> list[str]:
    """Every .cu file under csrc/cuda/ (one folder per op once it has several kernel plans) and the host-only .cpp
    files beside them (compiled by the host compiler, which is faster at ATen's headers than nvcc), less the
    head-dim buckets that LSTM_ATTN_HEAD_DIMS leaves out (files named *_hdimN.cu)."""
    sources = sorted(glob.glob("csrc/cuda/**/*.cu", recursive=True) + glob.glob("csrc/cuda/**/*.cpp", recursive=True))
    keep = os.environ.get("LSTM_ATTN_HEAD_DIMS")
    if not keep:
        return sources
    wanted = {int(d) for d in keep.split(",")}
    kept = []
    for src in sources:
        m = re.search(r"_hdim(\d+)\.cu$", src)
        if m is None or int(m.group(1)) in wanted:
            kept.append(src)
    return kept


def _head_dim_macros(cuda_sources: list[str]) -> list[str]:
    dims = sorted({int(m.group(1)) for s in cuda_sources if (m := re.search(r"_hdim(\d+)\.cu$", s))})
    return [f"-DLSTM_ATTN_HDIM_{d}" for d in dims]


def extensions():
    debug = os.environ.get("LSTM_ATTN_DEBUG", "0") == "1"
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/attention_gemm.cpp",
               *sorted(glob.glob("csrc/cpu/**/*.cpp", recursive=True))]
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # No -std flag: torch's build helpers pick the standard its headers need (C++17 up to 2.13, C++20 after).
    cxx += ["-fopenmp" if torch.backends.openmp.is_available() else ""]
    cxx = [f for f in cxx if f]
    include_dirs = [os.path.join(HERE, "csrc")]
    if not _cuda_wanted():
        return [CppExtension("lstm_attn._C", sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [])]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cuda_sources = _cuda_sources()
    hdims = _head_dim_macros(cuda_sources)
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    # No --use_fast_math: the exact float32 path is held to 1e-5 of a float64 reference.
    nvcc += ["--expt-relaxed-constexpr", *hdims]
    return [CUDAExtension("lstm_attn._C", sources + cuda_sources, include_dirs=include_dirs,
                          define_macros=[("LSTM_ATTN_WITH_CUDA", "1")],
                          extra_compile_args={"cxx": cxx + hdims, "nvcc": nvcc},
                          extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [])]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
