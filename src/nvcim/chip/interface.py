"""The chip interface that recovery methods use, and nothing else.

A :class:`Chip` is N chip instances that can be programmed, read back, write-verified and run, the way a
test bench drives real silicon, together with what the user who deploys a model holds anyway:

- the *design* (``config``: the datasheet, mapping, floorplan, converters) and the layer geometry;
- the *reference*, the ideal digital model that the chips are programmed from (its outputs, its layers'
  inputs and outputs, its weights as crossbar matrices, its loss gradients, and a training pass that
  injects the design's non-idealities into it);
- the digital periphery *registers* a method may set: per-column output gain/offset, sparse SRAM weights,
  the DAC input range.

A method sees read-back conductances (with read noise), the outputs of layers it could measure, and those
registers. It never sees the simulator's hidden state (true conductances, fault maps).
:class:`~nvcim.chip.simulated.SimulatedChip` implements the protocol for an
:class:`~nvcim.chip.model.AnalogModel`; ``tests/fake_chip.py`` is a second, minimal implementation that
every method is tested against.

Shapes: conductances in siemens, ``(N, S, O', K)`` (chips, slices, array columns, logical rows); weight
matrices ``(O, K)`` in the crossbar's order (``K`` = what one output sums over: ``in_features`` of a
linear layer, ``C/groups * kh * kw`` of a convolution). Register values may require grad: then
:meth:`Chip.infer` is differentiable with respect to them (the simulator by autograd; a real chip would
back-propagate through a surrogate built from read-back conductances).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..config import ChipConfig, DeviceConfig
from ..mapping import Mapping


class Verified(NamedTuple):
    """What a write-verify loop reports."""

    pulses: Tensor  # (N,) extra programming pulses per chip
    failed_pos: Tensor  # (N, S, O', K) masked cells still outside the tolerance when the loop stopped
    failed_neg: Tensor
    stuck_pos: Tensor  # (N, S, O', K) the failed cells given up as stuck (their reads stayed at a rail)
    stuck_neg: Tensor


class DeviceModel(Protocol):
    """The datasheet model of the chip's cells (:class:`nvcim.devices.ProgrammingModel` for the simulator)."""

    @property
    def device(self) -> DeviceConfig:
        """The device's datasheet values (conductance range, levels, noise)."""
        ...

    @property
    def between_chip_gain(self) -> bool:
        """True: the between-chip term scales cells (a write gain that a re-write lands with again); False:
        it adds an offset (which a differential pair cancels)."""
        ...

    def levels(self) -> Tensor | None:
        """Programmable level conductances (S), ascending; None for a continuous device."""
        ...

    def round(self, target: Tensor) -> Tensor:
        """``target`` (S) rounded to the nearest programmable level."""
        ...

    def write_spread(self, target: Tensor) -> Tensor:
        """Std (S) of one write to ``target`` (S), the within-chip part that a re-write re-rolls."""
        ...


@runtime_checkable
class Chip(Protocol):
    """N chips behind one interface."""

    # ---- the design ------------------------------------------------------------------------------
    @property
    def n_chips(self) -> int: ...

    @property
    def config(self) -> ChipConfig:
        """The design: device datasheet, variability model, mapping, array, circuit."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the chip's tensors live (inputs may be handed on any device)."""
        ...

    def layer_names(self) -> list[str]:
        """The analog layers, in forward order."""
        ...

    def mapping(self, layer: str) -> Mapping:
        """The layer's weight-to-conductance mapping, which answers the scheme's questions (``reference``:
        whether the negative side is a shared reference column rather than a partner per weight)."""
        ...

    def device_model(self) -> DeviceModel:
        """The cells' datasheet model: levels, write spread, the kind of between-chip variation."""
        ...

    def row_tiles(self, layer: str) -> Tensor:
        """The crossbar tile of every logical row ``(K,)`` (the floorplan, which a designer knows)."""
        ...

    def ir_attenuation(self, layer: str, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """The design's IR-drop model: the factor a by which each cell's contribution to the column current
        shrinks (a x G is its transfer conductance, sneak paths included; a can pass 1 where the coupling
        around a weak cell outweighs its own drop) when the array holds conductances ``pos``/``neg`` (any
        leading dims, then ``(S, O', K)``); ones when the wires are ideal. It uses the array geometry, wire
        resistance and ``array.ir_solver``, which a designer knows, not the cells' hidden state."""
        ...

    def decode(self, layer: str, pos: Tensor, neg: Tensor) -> Tensor:
        """Weights ``(N, O, K)`` that conductances represent under the layer's mapping (the periphery's
        scale and shift-and-add, which the designer knows)."""
        ...

    # ---- the reference (the ideal digital model the chips are programmed from) -------------------
    def reference(self, x: Tensor) -> Tensor:
        """The ideal model's outputs ``(B, ...)``."""
        ...

    def reference_layer_io(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Input and output of every analog layer on the ideal model, by layer name, ``(B, ...)`` each."""
        ...

    def weight_matrix(self, layer: str) -> Tensor:
        """The ideal weights of ``layer`` as the crossbar matrix ``(O, K)``."""
        ...

    def bias(self, layer: str) -> Tensor | None:
        """The layer's digital bias ``(O,)``, or None."""
        ...

    def unfold(self, layer: str, v: Tensor) -> Tensor:
        """A layer input ``v`` (B, ...) as the rows the arrays multiply, ``(positions, K)``."""
        ...

    def reference_grads(self, x: Tensor, y: Tensor, loss: Callable[[Tensor, Tensor], Tensor] | None = None
                        ) -> dict[str, Tensor]:
        """Gradient of ``loss(outputs, y)`` (default: the mean cross-entropy) of the ideal model on ``(x, y)``
        with respect to each analog layer's weight matrix, ``(O, K)`` each."""
        ...

    def parameters(self) -> list[Tensor]:
        """The ideal model's trainable parameters (training methods update them, then :meth:`program`)."""
        ...

    def buffers(self) -> list[Tensor]:
        """The ideal model's state that training changes besides its parameters: the running statistics of
        its BatchNorm layers. A training method that keeps its best epoch keeps these with the parameters."""
        ...

    def reinitialize(self, seed: int) -> None:
        """Draw the ideal model's parameters afresh, as PyTorch initialises a new model (seeded), and reset
        its BatchNorm statistics: training "from scratch" starts here. :meth:`program` afterwards."""
        ...

    def train_forward(self, x: Tensor, step: int, censor: float = 0.0,
                      act_quant: dict[str, tuple[Tensor, int, bool]] | None = None, train: bool = True,
                      adc: bool = False) -> Tensor:
        """One noise-injection training pass ``(B, ...)``: the ideal model with the weights of a freshly
        drawn chip (number ``step``, never one of the N programmed chips) in the forward pass and the ideal
        weights in the backward pass (straight-through), in training mode. ``censor`` > 0 clips the
        programming draws at that many sigma; ``act_quant`` maps a layer name to (step size, bits,
        signed) of a learned input quantiser that replaces the layer's DAC. ``train=False``: the same pass in
        evaluation mode (BatchNorm running statistics, no dropout), for validation. ``adc``: digitise each
        array tile's partial sum with the layer's calibrated ADC, as a read does (gradients pass straight
        through the rounding); it costs one product per tile."""
        ...

    # ---- the cells ---------------------------------------------------------------------------------
    def targets(self, layer: str) -> tuple[Tensor, Tensor]:
        """The conductances the mapper asks for, ``(S, O', K)`` each (known to the user, not noisy)."""
        ...

    def read(self, layer: str) -> tuple[Tensor, Tensor]:
        """Read every cell back once, with read noise: ``(N, S, O', K)`` for each side."""
        ...

    def program(self, calibration: Tensor | None = None, converters: str = "all") -> None:
        """Program every cell of every chip to the mapping of the current ideal weights (one noisy write
        each, the same devices), reset the output gain/offset registers (SRAM weights stay). Writing cells
        leaves the converter ranges as they are; with ``calibration`` inputs they are re-calibrated:
        ``converters`` "all" (DAC and ADC ranges) or "adc" (ADC ranges only, the DAC ranges kept)."""
        ...

    def write_verify(self, layer: str, mask_pos: Tensor, mask_neg: Tensor, tol: float, max_pulses: int,
                     give_up: int = 0) -> Verified:
        """Program -> verify-read -> re-pulse the masked cells until within ``tol`` (fraction of
        g_max - g_min) or ``max_pulses``. ``give_up`` > 0: a cell whose last ``give_up`` verify reads all
        failed at the same rail (within ``tol`` plus three read-noise sigma of g_min or g_max, with its target
        more than twice ``tol`` away from that rail) is declared stuck and gets no more pulses. Returns the
        pulses per chip and the cells that failed or were given up."""
        ...

    def write(self, layer: str, side: str, mask: Tensor, targets: Tensor) -> Tensor:
        """One (noisy) programming pulse to each masked cell of ``side`` ('pos' or 'neg') towards
        ``targets`` (N, S, O', K) in siemens; returns pulses per chip ``(N,)``."""
        ...

    def row_routing(self, layer: str) -> Tensor:
        """The physical row of every logical row, per chip ``(N, K)`` (identity until remapped)."""
        ...

    def remap_rows(self, layer: str, perm: Tensor) -> Tensor:
        """Route logical row k of chip n to physical row ``perm[n, k]`` of the same tile (the input
        driver's routing). Cells keep their physical state, so moved rows must be programmed afterwards.
        Returns the number of moved rows per chip ``(N,)``."""
        ...

    # ---- keeping a state ---------------------------------------------------------------------------
    def checkpoint(self) -> object:
        """An opaque copy of everything a method may change on every chip: the cells, the row routing and
        the digital registers (gain/offset, SRAM). The ideal model and the DAC ranges are not part of it."""
        ...

    def restore(self, state: object, chips: Tensor) -> Tensor:
        """Put the chips where ``chips`` ``(N,)`` (bool) is true back into ``state`` (a :meth:`checkpoint`
        of this chip). Returns the cells re-programmed per chip ``(N,)``: the simulator restores them
        exactly, a real chip would write-verify them back."""
        ...

    # ---- running -----------------------------------------------------------------------------------
    def infer(self, x: Tensor, capture: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Outputs ``(N, B, ...)`` and the outputs of the ``capture`` layers, each ``(N, B, ...)``."""
        ...

    def layer_inputs(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """The digital inputs that ``layers`` receive on each chip (what their DACs are fed, a register
        a real chip can read out) when the chip runs ``x``: each ``(N, B, ...)``."""
        ...

    # ---- the digital registers ---------------------------------------------------------------------
    def set_output_affine(self, layer: str, gain: Tensor, offset: Tensor) -> None:
        """Set the digital per-chip, per-output-column registers y -> gain y + offset, ``(N, O)``."""
        ...

    def output_affine(self, layer: str) -> tuple[Tensor, Tensor]: ...

    def set_sram(self, layer: str, mask: Tensor, weights: Tensor) -> None:
        """Sparse digital SRAM weights added to the crossbar's output, y += (mask * weights) x:
        ``mask`` boolean ``(O, K)`` (the same positions on every chip) or ``(N, O, K)``, ``weights``
        ``(N, O, K)``."""
        ...

    def sram(self, layer: str) -> tuple[Tensor, Tensor] | None:
        """(mask, weights) of the layer's SRAM, or None when it has none."""
        ...

    def input_format(self, layer: str) -> tuple[int, bool, float]:
        """The layer's DAC: (bits, signed, full scale); bits 0 when the inputs are not quantised."""
        ...

    def set_input_range(self, layer: str, full_scale: float) -> None:
        """Set the DAC's full-scale input (in the layer's input units, > 0)."""
        ...
