"""How a simulation runs, not what the chip is: :class:`Runtime` (memory budget, chip blocks, compiling,
where cells live, the variance format) and what ``auto`` resolves to on this device."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config.fields import check, spec
from ..errors import ShapeError

# Runtime.chip_block and memory_mb = 0 (auto). A CPU gains nothing from larger blocks (measured on LeNet-5,
# docs/benchmarks.md); a GPU pays a launch per kernel, layer, chip block and sub-batch, so there blocks and
# sub-batches grow to a share of the free memory: a quarter for a block's chip state (its cells made on demand,
# packed values and read-noise variances, write temporaries: about 3x the stored state) and a quarter for its
# activations, the other half left to the allocator and the stored cells' growth.
CPU_CHIP_BLOCK = 10
DEFAULT_MEMORY_MB = 1024.0
CPU_SUB_BATCH_MB = 384.0
GPU_SHARE = 0.25


@dataclass(frozen=True)
class Runtime:
    """How simulation runs (not what the chip is)."""

    memory_mb: float = spec(0.0, "memory budget for the activations of one chip block and image sub-batch; "
                            "0: auto (1024 MiB; on a GPU a quarter of its free memory). On a CPU sub-batches "
                            "also stay within 384 MiB", unit="MiB", lo=1.0, zero_ok=True)
    chip_block: int = spec(0, "chips computed together in one grouped pass; 0: auto (10 on a CPU: 10 divides the "
                           "usual 100 or 1000 chips, so no padded chips are computed; on a GPU as many chips as "
                           "a quarter of its free memory holds, in equal blocks, so that the kernels per layer "
                           "do not grow with the chip count). The last block is padded, so results are bitwise "
                           "identical whatever the block, chip count or memory budget",
                           unit="chips", lo=1, hi=4096, zero_ok=True)
    compile: str = spec("auto", "fuse the analog epilogue with torch.compile: on, off, or auto (compile once "
                        "this model's chip passes are large enough to repay the one-off compile: one call of at "
                        "least 5e8 activation elements, or 2e9 in all; that first call runs eager while a child "
                        "process compiles its kernels, and passes switch when it is done; needs a C++ compiler or "
                        "a GPU). Programming draws compile when this is on, or under auto above 1e9 draws (about "
                        "20x faster on a CPU once compiled). Compiled and eager passes and writes give the same "
                        "numbers to the bit, so this only changes speed",
                        choices=("auto", "on", "off"))
    cells: str = spec("auto", "where programmed cells live: stored (every chip's conductances, fault codes and "
                      "drift factors in memory, 5-9 bytes per cell and chip; needed by methods that read or "
                      "re-program cells: write-verify, map-correct's remapping), on-demand (each pass writes "
                      "the cells of its chip block again from the same counter-based draws: the same numbers, "
                      "memory for one block, a write per block and pass), or auto: stored while every chip's "
                      "state fits in half the free memory, else on-demand (logged)",
                      choices=("auto", "stored", "on-demand"))
    retain_heap: bool = spec(True, "CPU runs on Linux: fix glibc's malloc thresholds so that freed "
                             "activations stay in the heap rather than being unmapped and faulted in again "
                             "every sub-batch (up to 2x faster; the process keeps its peak heap)")
    variance: str = spec("auto", "number format of the read-noise variance products (sum of x^2 G^2 per "
                         "output): float32 (as the values), bfloat16 (inputs and conductances rounded to 8 "
                         "significant bits, accumulated in float32: each output's noise std within 0.6 % of "
                         "its float32 value; 1.3-2x faster convolutions), or auto: bfloat16 for float32 "
                         "runs on CPUs with native bfloat16 instructions (AVX512-BF16, AMX), else float32",
                         choices=("auto", "float32", "bfloat16"))

    def __post_init__(self) -> None:
        check(self)


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (read from /proc/cpuinfo; False elsewhere).
    Without them oneDNN emulates bfloat16, which is slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def variance_dtype(runtime: Runtime, dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """The dtype of the read-noise variance products for a run in ``dtype`` on ``device`` (None: ``dtype``)."""
    if dtype != torch.float32 or runtime.variance == "float32":
        return None
    if runtime.variance == "bfloat16" or (device.type == "cpu" and native_bf16()):
        return torch.bfloat16
    return None


def gpu_free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on a CUDA device: the driver's free memory plus what PyTorch's caching
    allocator holds unused."""
    free = torch.cuda.mem_get_info(device)[0]
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def chip_block(runtime: Runtime, chips: int, device: torch.device, per_chip_bytes: Callable[[], int]) -> int:
    """Chips per grouped pass: ``Runtime.chip_block``, or for 0 (auto) 10 on a CPU and, on a GPU, as many
    chips as a quarter of its free memory holds (``GPU_SHARE``; ``per_chip_bytes``: one chip's state while it
    runs), in equal blocks (100 chips that fit 64 at a time run as two blocks of 50, not 64 and a padded 36)."""
    if runtime.chip_block:
        return min(runtime.chip_block, chips)
    if device.type != "cuda":
        return min(CPU_CHIP_BLOCK, chips)
    return even_blocks(chips, int(GPU_SHARE * gpu_free_bytes(device) // max(1, per_chip_bytes())))


def activation_budget(runtime: Runtime, device: torch.device) -> float:
    """Bytes of activations per chip block and image sub-batch: ``Runtime.memory_mb``, or for 0 (auto)
    1024 MiB, and on a GPU a quarter of its free memory. On a CPU at most 384 MiB: measured best for
    LeNet-5 (docs/benchmarks.md), between the per-sub-batch overhead of small sub-batches and glibc's
    32 MiB mmap limit per tensor of large ones."""
    mb = runtime.memory_mb
    if device.type == "cpu":
        return min(mb or DEFAULT_MEMORY_MB, CPU_SUB_BATCH_MB) * 2**20
    if mb:
        return mb * 2**20
    if device.type == "cuda":
        return GPU_SHARE * gpu_free_bytes(device)
    return DEFAULT_MEMORY_MB * 2**20


def even_blocks(chips: int, most: int) -> int:
    """The block size that splits ``chips`` into the fewest equal blocks of at most ``most`` (at least 1,
    at most 4096, Runtime.chip_block's bound)."""
    most = max(1, min(most, 4096, chips))
    return -(-chips // -(-chips // most))


def per_chip(leaf: Any, b: int, block: int, keep: int) -> Any:
    """One output leaf of a block pass, ``(B block, ...)`` image-major -> ``(keep, B, ...)``."""
    if not isinstance(leaf, Tensor):
        return leaf
    if leaf.dim() == 0 or leaf.shape[0] != b * block:
        raise ShapeError(f"a model output has shape {tuple(leaf.shape)}: every output tensor must keep the "
                         f"batch as its first dimension ({b} images x {block} chips in this pass)")
    return leaf.reshape(b, block, *leaf.shape[1:]).transpose(0, 1)[:keep]


def join_blocks(blocks: list[list[Any]]) -> Any:
    """Per block, per sub-batch pieces of one output leaf -> ``(chips, B, ...)``."""
    if not isinstance(blocks[0][0], Tensor):
        return blocks[0][0]
    return torch.cat([torch.cat(subs, dim=1) for subs in blocks], dim=0)
