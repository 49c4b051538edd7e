"""What one forward pass tells the analog layers (a :class:`Pass` of one of four types: digital, calibrate,
train, chip), and the small value types and layout helpers that the layers' matrix products share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


def _plain(t: Tensor) -> Tensor:
    """A Parameter as a plain tensor (detached under no_grad): the compiled epilogue guards on the type
    and on requires_grad, and recompiles for each mismatch (hitting dynamo's recompile limit on a ResNet)."""
    return t.view(-1) if torch.is_grad_enabled() else t.detach().view(-1)


def contiguous_rows(t: Tensor) -> Tensor:
    """``t.contiguous()`` for a permuted tensor whose last dimension is still innermost. Pairs of float32
    move as one float64 where strides allow: PyTorch's strided copy costs per element, and these copies
    gather short rows (6 filters of a first convolution: about 1.5x faster)."""
    if (t.dtype == torch.float32 and t.shape[-1] % 2 == 0 and t.stride(-1) == 1 and t.storage_offset() % 2 == 0
            and all(st % 2 == 0 for st, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1)):
        # Tensor.view(dtype) checks the stride of every dimension, size-1 ones included (a 1x1 feature map
        # of a ResNet gives odd ones); their stride is never used, so it is set to 0 first.
        t = t.as_strided(t.shape, [st if n > 1 else 0 for st, n in zip(t.stride(), t.shape)], t.storage_offset())
        return t.view(torch.float64).contiguous().view(torch.float32)
    return t.contiguous()


@dataclass(frozen=True)
class Prepared:
    """A layer input laid out for :meth:`AnalogLayer.mvm`: ``x``, B images, and L positions (Linear)."""

    x: Tensor
    n: int
    n_l: int

    def squared(self, dtype: torch.dtype | None = None) -> Prepared:
        """x * x (stored as ``dtype``, default x's), in x's memory layout (elementwise ops may pick another
        one for ambiguous strides, and a variance in another layout than the value makes the epilogue
        stride across memory)."""
        x = self.x
        if torch.is_grad_enabled() and x.requires_grad:  # out= has no autograd
            sq = x * x
            if sq.stride() != x.stride() or (dtype is not None and dtype != sq.dtype):
                sq = torch.empty_strided(x.shape, x.stride(), dtype=dtype or sq.dtype, device=sq.device).copy_(sq)
        else:
            sq = torch.mul(x, x, out=torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device))
            if dtype is not None and dtype != sq.dtype:
                sq = sq.to(dtype)  # keeps the strides; a mixed-dtype out= above would be 10x slower
        return Prepared(sq, self.n, self.n_l)


@dataclass(frozen=True)
class EpilogueOperands:
    """Per-block operands of the analog epilogue (see :func:`~nvcim.chip.kernel.analog_epilogue`)."""

    gain: Tensor | None  # (c, T, S, O) ADC gain error factor, or None
    offset: Tensor | None  # (c, T, S, O) ADC offset error (signal units), or None
    delta: Tensor | None  # (T, S, O) ADC step (signal units), or None: no ADC
    lo: int  # lowest and highest ADC code
    hi: int
    slice_w: Tensor  # (S,) shift-and-add weight of each slice
    scale: Tensor  # (c, O) weight per unit signal (column scale x drift compensation x gain register)
    bias: Tensor  # (O,) digital bias
    extra: Tensor | None  # (c, O) per-chip additive register part, added after the kernel
    adc_model: str = "uniform"  # the ADC config's key (circuit.adc_key): a model name, or JSON with its fields


@dataclass(frozen=True)
class ReadNoiseOperands:
    """What the epilogue needs to draw read noise: the variance of every tile output (the shape of the
    outputs, or bfloat16) and the int32 keys of the chips (c,) and images (B,) of this pass."""

    var: Tensor
    chip_keys: Tensor
    image_keys: Tensor


class Reader(Protocol):
    """What a pass asks of an analog layer: one method per kind of pass."""

    def digital(self, x: Tensor) -> Tensor: ...

    def train_read(self, x: Tensor, ctx: TrainPass) -> Tensor: ...

    def calibration_read(self, x: Tensor, ctx: CalibratePass) -> Tensor: ...

    def chip_read(self, x: Tensor, ctx: ChipPass) -> Tensor: ...


@dataclass
class Pass:
    """What the enclosing :class:`~nvcim.chip.model.AnalogModel` tells its layers for one forward pass; the
    pass's type says what kind of pass it is (no mode strings), and :meth:`run` is the one dispatch a
    layer's forward makes on it."""

    batch: int = 0  # images of this pass
    cache: dict = field(default_factory=dict)  # per chip block: packed weights and operands of each layer
    reads: dict[int, int] = field(default_factory=dict)  # reads of each layer in this forward

    def run(self, layer: Reader, x: Tensor) -> Tensor:
        """The layer's output on ``x`` in this kind of pass."""
        raise NotImplementedError

    def rows(self) -> int | None:
        """Rows of a layer input that carry this pass's images and chips (None: the batch as it comes)."""
        return None


@dataclass
class DigitalPass(Pass):
    """The ideal model: the layers run their digital modules' arithmetic with the ideal weights."""

    def run(self, layer: Reader, x: Tensor) -> Tensor:
        return layer.digital(x)


@dataclass
class CalibratePass(Pass):
    """Noise-free mapped weights (levels, no variation); each layer sets its DAC and ADC ranges."""

    inputs: bool = True  # False: keep the DAC ranges (apply them) and set the ADC ranges only

    def run(self, layer: Reader, x: Tensor) -> Tensor:
        return layer.calibration_read(x, self)

    def rows(self) -> int | None:
        return self.batch


@dataclass
class TrainPass(Pass):
    """Noise-injection training: a freshly drawn chip's weights forward, the ideal ones backward."""

    train_chip: int = 0  # id of the fresh chip drawn for this step
    censor: float = 0.0  # right-censor programming draws at this many sigma (0 = off)
    act_quant: dict = field(default_factory=dict)  # layer name -> (step Parameter, bits, signed)
    adc: bool = False  # digitise each array tile's partial sum with the layer's ADC (straight-through)

    def run(self, layer: Reader, x: Tensor) -> Tensor:
        return layer.train_read(x, self)


@dataclass
class ChipPass(Pass):
    """The programmed chips ``chips`` of one block read the images of one sub-batch."""

    chips: Tensor | None = None  # (c,) indices into the chip dimension of this pass
    block: tuple[int, ...] = ()  # the same indices as host integers (no device sync to read them)
    image_ids: Tensor | None = None  # (B,) global image indices, keys of the read noise
    read_key: int = 0
    compiled: bool = False
    image_keys: Tensor | None = None  # (B,) int32 keys derived from image_ids (set by the first layer)
    var_dtype: torch.dtype | None = None  # dtype of the read-noise variance products (None: as y)
    # the model's input as every chip sees it, (B c, ...) image-major (``entry``), made from the shared
    # (B, ...) batch ``entry_src``; a layer whose input is still that very tensor, unmodified, may compute
    # all chips from ``entry_src`` (the same numbers, fewer products)
    entry: Tensor | None = None
    entry_src: Tensor | None = None
    entry_version: int = 0
    ran: set[int] = field(default_factory=set)  # ids of the analog layers that ran (shared by the blocks)

    def run(self, layer: Reader, x: Tensor) -> Tensor:
        return layer.chip_read(x, self)

    def rows(self) -> int | None:
        return self.batch * (int(self.chips.numel()) if self.chips is not None else 1)


RunContext = DigitalPass | CalibratePass | TrainPass | ChipPass


GEMM_ROWS, GEMM_COLS = 8, 16


def row_padded(x: Tensor) -> Tensor:
    """x (batch, M, R) as a contiguous tensor with M zero-padded to a multiple of :data:`GEMM_ROWS`.

    Why: BLAS kernels handle a remainder of rows or columns, a narrow matrix and a strided operand with other
    code, which sums in another order. An image's output then differed in its last bits with the number of
    images in the call and its place among them (MKL's AVX-512 sgemm: odd rows of a 10-column product), and
    an ADC code could flip where a value sat on a code boundary. With whole row and column blocks
    (:func:`col_padded`) in one layout, an image's and a chip's products do not depend on their neighbours
    (tested with MKL in tests/test_reproducibility.py and tests/test_managed_io.py; another BLAS or a GPU
    may differ in the last bit).
    """
    pad = -x.shape[1] % GEMM_ROWS
    return F.pad(x, (0, 0, 0, pad)) if pad else x.contiguous()


def col_padded(w: Tensor) -> Tensor:
    """Packed weights (batch, R, N) contiguous, N zero-padded to a multiple of :data:`GEMM_COLS`."""
    pad = -w.shape[-1] % GEMM_COLS
    return F.pad(w, (0, pad)) if pad else w.contiguous()
