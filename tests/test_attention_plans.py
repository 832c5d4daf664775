"""Each kernel plan of attention_layernorm on its own, through the op's `plan` argument: forward and all six gradients
against the reference, determinism, NaN isolation, empty batches, opcheck. Here: the CPU's gemm plan (its tiled plan
is what the cpu backend runs in test_attention_layernorm.py). On a GPU: every CUDA plan, at the awkward sizes and at
T = 4096. The table that picks a plan per call (lstm_attn/plans.py) is tested in test_plans.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from _backends import require_backend
from _cases import ATTENTION_LAYERNORM_NAMES, FULL_SHAPES, attention_layernorm_inputs, check_op_parity
from lstm_attn import plans, reference_ops

gpu = pytest.mark.gpu
_16BIT = (torch.bfloat16, torch.float16)
_GPU_DTYPES = (torch.float32, *_16BIT)
# The GPU's long rows: every plan at T = 4096, where the tiles, the pipelines and the split over keys all repeat.
LONG_SHAPES = [(2, 4096, 4096, 64), (1, 4096, 4096, 128), (1, 1, 4096, 256), (1, 4096, 4096, 512)]
# The CPU's gemm plan has no tiles for a size to fall between: the awkward sizes of FULL_SHAPES (T = 1, Tq = 1, odd
# and non-power-of-two T and H, the largest H) without their repeats, which keeps CI's 2 cores inside its budget.
CPU_SHAPES = [(B, Tq, Tk, H) for B, Tk, H in itertools.product((1, 3), (1, 7, 130), (1, 59, 128, 512))
              for Tq in sorted({1, Tk})]

# (plan, device, dtypes): every plan each device runs, less the CPU's tiled plan (the cpu backend's own tests).
PLAN_DEVICES = [
    pytest.param("gemm", "cpu", (torch.float64, torch.float32, *_16BIT), id="gemm-cpu"),
    # On a CPU the TF32 products are a model (operands truncated to TF32, float32 products): the split's error.
    pytest.param("gemm3xtf32", "cpu", (torch.float32,), id="gemm3xtf32-cpu"),
    pytest.param("tiled", "cuda", _GPU_DTYPES, id="tiled-cuda", marks=gpu),
    pytest.param("gemm", "cuda", _GPU_DTYPES, id="gemm-cuda", marks=gpu),
    pytest.param("gemm3xtf32", "cuda", (torch.float32,), id="gemm3xtf32-cuda", marks=gpu),
    pytest.param("flash", "cuda", _16BIT, id="flash-cuda", marks=gpu),
]


def _runs(plan, dtype, head_dim):
    return plan not in ("flash", "gemm3xtf32") or plans.can_run("cuda", "attention", plan, dtype, head_dim)


def parity_params():
    params = []
    for p in PLAN_DEVICES:
        plan, device, dtypes = p.values
        shapes = FULL_SHAPES + LONG_SHAPES if device == "cuda" else CPU_SHAPES
        for shape, dtype in itertools.product(shapes, dtypes):
            if _runs(plan, dtype, shape[3]):
                dt = str(dtype).removeprefix("torch.")
                params.append(pytest.param(plan, device, shape, dtype, marks=p.marks,
                                           id=f"{p.id}-{dt}-" + "x".join(map(str, shape))))
    return params


def planned(plan, eps=1e-5, scale=None):
    """attention_layernorm's forward op with this plan, as a function of the six tensors (autograd through the op)."""
    def op(q, k, v, residual, weight, bias):
        s = q.shape[-1] ** -0.5 if scale is None else scale
        return torch.ops.lstm_attn.attention_layernorm_fwd(q, k, v, residual, weight, bias, eps, s, plan)[0]
    return op


def plan_devices(dtype_of=lambda dtypes: dtypes[0]):
    """(plan, device, dtype) per plan, with one dtype it runs: for the checks that need not sweep dtypes."""
    return [pytest.param(p.values[0], p.values[1], dtype_of(p.values[2]), id=p.id, marks=p.marks)
            for p in PLAN_DEVICES]


def _backend(device):
    return "cpu" if device == "cpu" else "cuda"


@pytest.mark.parametrize("plan, device, shape, dtype", parity_params())
def test_plan_parity_with_reference(plan, device, shape, dtype):
    require_backend(_backend(device), device)
    B, Tq, Tk, H = shape
    inputs = attention_layernorm_inputs(B, Tq, Tk, H, dtype, device)
    grad_out = torch.randn(B, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    check_op_parity(planned(plan), reference_ops.attention_layernorm, inputs, grad_out, ATTENTION_LAYERNORM_NAMES)


# One H per head-dim bucket of the CUDA kernels (32 .. 512), none a multiple of 16: the masked columns too.
TILE_HEAD_DIMS = (24, 59, 111, 200, 300)


def _tile_shapes(tiles: list[int]) -> list[tuple[int, int]]:
    """(Tq, Tk) on and just past every tile size, square, with one query row, and against keys several tiles long."""
    lengths = sorted({t + d for t in tiles for d in (0, 1)} | {2 * max(tiles) + 44})
    many = lengths[-1]
    return sorted({(L, L) for L in lengths} | {(1, L) for L in lengths} | {(L, many) for L in lengths})


@gpu
@pytest.mark.parametrize("H", TILE_HEAD_DIMS)
@pytest.mark.parametrize("plan, dtype", [("tiled", torch.float32), ("tiled", torch.bfloat16), ("flash", torch.float16),
                                         ("flash", torch.bfloat16)])
def test_cuda_plan_parity_at_every_tile_boundary(plan, dtype, H):
    """Each CUDA plan at the tile sizes it runs for this dtype and head-dim bucket (the op reads them from the same
    traits as the launches), forward and all six gradients, an explicit scale and eps on half the shapes."""
    require_backend("cuda", "cuda")
    if not plans.can_run("cuda", "attention", plan, dtype, H):
        pytest.skip(f"plan {plan!r} does not run {dtype} at H = {H}")
    tiles = torch.ops.lstm_attn.cuda_attention_tiles(plan, H, dtype)
    assert tiles and all(t in (16, 32, 64, 128) for t in tiles), tiles
    for i, (Tq, Tk) in enumerate(_tile_shapes(tiles)):
        inputs = attention_layernorm_inputs(2, Tq, Tk, H, dtype, "cuda")
        grad_out = torch.randn(2, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(i)).to("cuda")
        scale, eps = (0.31, 1e-3) if i % 2 else (None, 1e-5)
        try:
            check_op_parity(planned(plan, eps=eps, scale=scale),
                            lambda *a: reference_ops.attention_layernorm(*a, eps=eps, scale=scale), inputs, grad_out,
                            ATTENTION_LAYERNORM_NAMES)
        except AssertionError as e:
            raise AssertionError(f"plan {plan}, {dtype}, H = {H}, Tq = {Tq}, Tk = {Tk} (tiles {tiles}): {e}") from e


@gpu
def test_flash_backward_with_more_blocks_than_fit():
    """The flash backward's key blocks add their dQ shares in key-block order, each waiting for the one before. With
    more blocks than the GPU holds at once, blocks start only as others finish, in an order CUDA does not promise:
    each takes its key block from a ticket as it starts, so it waits only for blocks that have started (a hang
    otherwise). An SM holds at most 32 blocks (sm_90's limit), so 32 per SM and one more batch row of key blocks
    are more than fit; the sum stays in order, the gradients deterministic and right."""
    require_backend("cuda", "cuda")
    Tq, Tk, H = 32, 4096, 64
    # At least this many key blocks per batch row, whichever of the plan's tile sizes is the backward's.
    key_blocks = Tk // max(torch.ops.lstm_attn.cuda_attention_tiles("flash", H, torch.bfloat16))
    B = 32 * torch.cuda.get_device_properties(0).multi_processor_count // key_blocks + 1
    inputs = attention_layernorm_inputs(B, Tq, Tk, H, torch.bfloat16, "cuda")
    grad_out = torch.randn(B, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to("cuda")
    check_op_parity(planned("flash"), reference.attention_layernorm, inputs, grad_out, ATTENTION_LAYERNORM_NAMES)

    def grads():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        return torch.autograd.grad(planned("flash")(*leaves), leaves, grad_out.to(torch.bfloat16))

    for name, a, b in zip(ATTENTION_LAYERNORM_NAMES, grads(), grads()):
        assert torch.equal(a, b), f"grad_{name} differs between two identical backward runs"


def test_cuda_tile_shapes_reach_every_boundary():
    assert _tile_shapes([32, 64]) == sorted(
        {(L, L) for L in (32, 33, 64, 65, 172)} | {(1, L) for L in (32, 33, 64, 65, 172)}
        | {(L, 172) for L in (32, 33, 64, 65, 172)})


@pytest.mark.parametrize("plan, device, dtype", plan_devices(lambda d: d[-1]))
def test_plan_explicit_scale_and_eps(plan, device, dtype):
    require_backend(_backend(device), device)
    inputs = attention_layernorm_inputs(2, 5, 9, 16, dtype, device)
    grad_out = torch.randn(2, 5, 16, dtype=torch.float64).to(device)
    check_op_parity(planned(plan, eps=1e-3, scale=0.37),
                    lambda *a: reference_ops.attention_layernorm(*a, eps=1e-3, scale=0.37), inputs, grad_out,
                    ATTENTION_LAYERNORM_NAMES)


@pytest.mark.parametrize("plan, device, dtype", plan_devices())
def test_plan_backward_is_deterministic(plan, device, dtype):
    require_backend(_backend(device), device)
    inputs = attention_layernorm_inputs(3, 97, 97, 64, dtype, device)
    grad_out = torch.randn(3, 97, 64, dtype=dtype).to(device)

    def grads():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        return torch.autograd.grad(planned(plan)(*leaves), leaves, grad_out)

    for name, a, b in zip(ATTENTION_LAYERNORM_NAMES, grads(), grads()):
        assert torch.equal(a, b), f"grad_{name} differs between two identical backward runs"


@pytest.mark.parametrize("plan, device, dtype", plan_devices())
def test_plan_nan_stays_in_its_batch_row(plan, device, dtype):
    require_backend(_backend(device), device)
    q, k, v, residual, weight, bias = attention_layernorm_inputs(3, 4, 9, 16, dtype, device)
    poisoned = [t.clone() for t in (q, k, v, residual)]
    for t in poisoned:
        t[1, 0, 0] = float("nan")
    leaves = [t.requires_grad_(True) for t in poisoned]
    out = planned(plan)(*leaves, weight, bias)
    out.backward(torch.ones_like(out))
    assert out[1].isnan().any(), "the poisoned row should be NaN"
    clean = planned(plan)(q, k, v, residual, weight, bias)
    for row in (0, 2):
        torch.testing.assert_close(out[row], clean[row])
        for t in leaves:
            assert torch.isfinite(t.grad[row]).all(), "a NaN in batch row 1 leaked into the gradient of another row"


@pytest.mark.parametrize("plan, device, dtype", plan_devices())
def test_plan_empty_batch(plan, device, dtype):
    require_backend(_backend(device), device)
    leaves = [t.requires_grad_(True) for t in attention_layernorm_inputs(0, 3, 5, 16, dtype, device)]
    out = planned(plan)(*leaves)
    assert out.shape == (0, 3, 16)
    out.sum().backward()
    assert torch.equal(leaves[4].grad, torch.zeros_like(leaves[4]))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("plan, device, dtype", plan_devices())
def test_plan_opcheck(plan, device, dtype, requires_grad):
    require_backend(_backend(device), device)
    inputs = [t.requires_grad_(requires_grad) for t in attention_layernorm_inputs(2, 3, 5, 16, dtype, device)]
    torch.library.opcheck(torch.ops.lstm_attn.attention_layernorm_fwd, (*inputs, 1e-5, 0.25, plan))
    if not requires_grad:
        saved = torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.25, plan)
        q, k, v, residual, weight, _ = inputs
        torch.library.opcheck(torch.ops.lstm_attn.attention_layernorm_bwd,
                              (torch.randn_like(saved[0]), q, k, v, residual, weight, *saved[1:], 0.25, plan))


@pytest.mark.parametrize("plan, device, dtype", plan_devices())
def test_only_the_gemm_plans_keep_the_probabilities(plan, device, dtype):
    require_backend(_backend(device), device)
    q, k, v, residual, weight, bias = attention_layernorm_inputs(2, 3, 5, 16, dtype, device)
    probs = torch.ops.lstm_attn.attention_layernorm_fwd(q, k, v, residual, weight, bias, 1e-5, 0.25, plan)[5]
    if plan not in plans.KEEPS_PROBS:
        assert probs.numel() == 0
        return
    expected = torch.softmax(q.double() @ k.double().transpose(1, 2) * 0.25, dim=-1)
    assert probs.dtype == dtype and probs.shape == (2, 3, 5)
    torch.testing.assert_close(probs.double(), expected, rtol=0, atol=torch.finfo(dtype).eps)


def test_unknown_plan_is_refused_by_name():
    require_backend("cpu", "cpu")
    inputs = attention_layernorm_inputs(1, 2, 3, 8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="plan must be 'tiled', 'flash', 'gemm' or 'gemm3xtf32', got 'fast'"):
        torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.5, "fast")
    with pytest.raises(RuntimeError, match="plan 'flash' is a CUDA plan"):
        torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.5, "flash")


def test_gemm_backward_needs_the_kept_probabilities():
    require_backend("cpu", "cpu")
    inputs = attention_layernorm_inputs(1, 2, 3, 8, torch.float32, "cpu")
    q, k, v, residual, weight, _ = inputs
    out, attn, lse, mean, rstd, no_probs = torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.5)
    with pytest.raises(RuntimeError, match=r"probs has shape \[0\]; the gemm plans need the probabilities"):
        torch.ops.lstm_attn.attention_layernorm_bwd(out, q, k, v, residual, weight, attn, lse, mean, rstd, no_probs,
                                                    0.5, "gemm")


# The split TF32 products at length: scores over 4096 keys sum 4096 products per entry, where one TF32 product per
# term (about 2^-11 relative) would break the float32 rule and the split (about 2^-21) must not.
LONG_3XTF32 = [pytest.param(device, shape, id=f"{device}-" + "x".join(map(str, shape)), marks=marks)
               for device, marks in (("cpu", ()), ("cuda", gpu)) for shape in ((1, 4096, 4096, 64), (1, 1, 4096, 256))]


@pytest.mark.parametrize("device, shape", LONG_3XTF32)
def test_gemm3xtf32_keeps_the_float32_rule_at_length(device, shape):
    require_backend(_backend(device), device)
    B, Tq, Tk, H = shape
    inputs = attention_layernorm_inputs(B, Tq, Tk, H, torch.float32, device)
    grad_out = torch.randn(B, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    check_op_parity(planned("gemm3xtf32"), reference_ops.attention_layernorm, inputs, grad_out, ATTENTION_LAYERNORM_NAMES)


def test_gemm3xtf32_runs_split_products_and_refuses_other_dtypes():
    require_backend("cpu", "cpu")
    inputs = attention_layernorm_inputs(2, 33, 70, 40, torch.float32, "cpu")
    split = torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.3, "gemm3xtf32")[0]
    exact = torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.3, "gemm")[0]
    # Not the exact products (the TF32 model drops bits), yet within float32's rounding of them.
    assert not torch.equal(split, exact)
    torch.testing.assert_close(split, exact, rtol=1e-5, atol=1e-5)
    half = attention_layernorm_inputs(1, 2, 3, 8, torch.bfloat16, "cpu")
    with pytest.raises(RuntimeError, match="plan 'gemm3xtf32' splits float32 products .* got BFloat16"):
        torch.ops.lstm_attn.attention_layernorm_fwd(*half, 1e-5, 0.5, "gemm3xtf32")


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_refuses_what_it_cannot_run(dtype):
    """Checked before any launch: float32, or H beyond the flash kernels' largest."""
    require_backend("cuda", "cuda")
    H = 8 if dtype == torch.float32 else plans.FLASH_MAX_HEAD_DIM + 1
    inputs = attention_layernorm_inputs(1, 2, 3, H, dtype, "cuda")
    with pytest.raises(RuntimeError, match="plan 'flash' runs"):
        torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.5, "flash")
