"""benchmarks/kernel_resources.py: reading cuobjdump's output (excerpts of a real sm_90 build of this package) and the
occupancy bound that follows. CI runs the script itself on the CUDA build; these tests need neither."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import kernel_resources as kernels  # noqa: E402

DQ = "_ZN9lstm_attn3gpu23attention_bwd_dq_kernelINS0_7SimtMmaILi128EEEfLi64ENS0_4TileILi64ELi32ELi128EEEEEvNS0_13AttnBwdParamsE"
DKDV = "_ZN9lstm_attn3gpu25attention_bwd_dkdv_kernelINS0_7SimtMmaILi128EEEfLi64ENS0_4TileILi64ELi64ELi128EEEEEvNS0_13AttnBwdParamsE"

RESOURCES = f"""
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function {DQ}:
  REG:128 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:624 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function {DKDV}:
  REG:168 STACK:16 SHARED:3072 LOCAL:24 CONSTANT[0]:624 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

ELF = f"""
.nv.info.{DQ}
	<0x4>
	Attribute:	EIATTR_MAXREG_COUNT
	Format:	EIFMT_HVAL
	Value:	0xff
	<0x8>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x80 0x1 0x1 
.nv.info.{DKDV}
	<0x8>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x100 0x1 0x1 
"""

SASS = f"""
		Function : {DQ}
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                  /* 0x00000a00ff017b82 */
        /*0010*/                   LDS.128 R4, [R2] ;                                      /* 0x0000000002047984 */
		Function : {DKDV}
        /*0000*/                   STL.64 [R1+0x8], R4 ;                                   /* 0x0000080401007387 */
        /*0010*/                   LDL R6, [R1+0x8] ;                                      /* 0x0000080001067983 */
        /*0020*/                   LDG.E R8, desc[UR4][R2.64] ;                            /* 0x0000000402087981 */
"""


def test_resources_threads_and_local_accesses_are_read_per_kernel():
    assert kernels.parse_resources(RESOURCES) == [("sm_90", DQ, (128, 0, 1024, 0)),
                                                  ("sm_90", DKDV, (168, 16, 3072, 24))]
    assert kernels.parse_max_threads(ELF) == {DQ: 128, DKDV: 256}
    assert kernels.parse_local_accesses(SASS) == {DQ: 0, DKDV: 2}  # LDS and LDG are not local memory


@pytest.mark.parametrize("registers, threads, expected", [
    (168, 128, (3, "registers")),  # 168 * 32 rounds to 5376 per warp: 12 warps of 4
    (128, 128, (4, "registers")),
    (24, 128, (16, "threads")),  # 2048 threads / 128
    (16, 32, (32, "blocks")),  # 64 would fit by threads; 32 blocks is the SM's limit
    (255, 1024, (0, "registers")),  # cannot launch: the block needs more registers than the SM has
])
def test_blocks_per_sm_on_sm90(registers, threads, expected):
    assert kernels.blocks_per_sm("sm_90", registers, threads) == expected


def test_blocks_per_sm_without_launch_bounds_or_for_an_unknown_arch_is_unknown():
    assert kernels.blocks_per_sm("sm_90", 64, None) == (None, "no __launch_bounds__")
    assert kernels.blocks_per_sm("sm_75", 64, 128) == (None, "unknown architecture")


def test_names_lose_namespaces_and_parameters():
    assert kernels._short("void lstm_attn::gpu::attention_bwd_dq_kernel<lstm_attn::gpu::SimtMma<128>, float, 64>"
                          "(lstm_attn::gpu::AttnBwdParams)") == "attention_bwd_dq_kernel<SimtMma<128>, float, 64>"
    assert kernels._short("void (anonymous namespace)::pool_kernel<float>((anonymous namespace)::PoolParams)") == \
        "pool_kernel<float>"


def test_the_table_flags_a_spilling_kernel(monkeypatch, capsys):
    outputs = {"--dump-resource-usage": RESOURCES, "-elf": ELF, "-sass": SASS}
    monkeypatch.setattr(kernels, "_run", lambda cuobjdump, flag, so: outputs[flag])
    table = kernels.kernel_table("lib.so", cuobjdump="cuobjdump")
    assert [(k.registers, k.max_threads, k.local_accesses, k.blocks_per_sm) for k in table] == \
        [(168, 256, 2, 1), (128, 128, 0, 4)]
    assert kernels.main(["--so", "lib.so", "--cuobjdump", "cuobjdump"]) == 1
    captured = capsys.readouterr()
    assert "1 kernel(s) load or store local memory" in captured.err and "attention_bwd_dkdv_kernel" in captured.err
    assert "| `attention_bwd_dq_kernel<SimtMma<128>, float, 64, Tile<64, 32, 128> >` | sm_90 | 128 |" in captured.out
