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


# The headers of torch's ATen/cuda/CUDAContext.h (which gives torch's cuBLAS handle), cuBLAS's among them.
_CUBLAS_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


def _cublas() -> tuple[list[str], list[str]]:
    """(host compiler flags, link flags) for calling cuBLAS directly: the gemm3xtf32 plan's products name their TF32
    compute type, which ATen's matmul does not let a caller do. The headers and library come from the CUDA toolkit
    or, where it lacks them (a minimal toolkit beside a pip torch), from torch's own nvidia packages, whose library
    torch has already loaded when ours is. Header folders outside the toolkit are searched after every other one
    (-idirafter), so that the toolkit's own CUDA headers still win. Anything missing: no flags, a note, and the plan
    refuses to run with the reason; the rest of the build is unchanged."""
    roots = [CUDA_HOME] if CUDA_HOME else []
    roots += sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "*")))
    include_dirs = [os.path.join(r, "include") for r in roots]
    found = {h: next((d for d in include_dirs if os.path.isfile(os.path.join(d, h))), None) for h in _CUBLAS_HEADERS}
    libs = [lib for r in roots for d in ("lib64", "lib")
            for lib in sorted(glob.glob(os.path.join(r, d, "libcublas.so*")))]
    missing = [h for h, d in found.items() if d is None] + ([] if libs else ["libcublas.so"])
    if missing:
        print(f"lstm_attn: building without cuBLAS (plan gemm3xtf32 will refuse to run): no {', '.join(missing)} "
              f"under {roots}")
        return [], []
    # An unversioned libcublas.so where there is one, else the versioned name torch's package ships.
    lib = min(libs, key=lambda path: (not path.endswith(".so"), path))
    toolkit = os.path.join(CUDA_HOME, "include") if CUDA_HOME else None
    extra = [d for d in dict.fromkeys(found.values()) if d != toolkit]
    cxx = ["-DLSTM_ATTN_WITH_CUBLAS=1", *(flag for d in extra for flag in ("-idirafter", d))]
    return cxx, [f"-L{os.path.dirname(lib)}", f"-l:{os.path.basename(lib)}"]


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
    cublas_cxx, cublas_link = _cublas()
    return [CUDAExtension("lstm_attn._C", sources + cuda_sources, include_dirs=include_dirs,
                          define_macros=[("LSTM_ATTN_WITH_CUDA", "1")],
                          extra_compile_args={"cxx": cxx + hdims + cublas_cxx, "nvcc": nvcc},
                          extra_link_args=(["-fopenmp"] if "-fopenmp" in cxx else []) + cublas_link)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
