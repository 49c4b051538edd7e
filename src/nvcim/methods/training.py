"""Training-time methods: noise-aware training (VAT, with the right-censored variant), joint
quantization- and variability-aware training (QVAT), and knowledge-distillation model transfer (KD).

All three train the *ideal* weights with a freshly drawn chip in every forward pass (chip ids from a
range that never overlaps the evaluated chips), straight-through to the ideal weights, then re-program the
same N chips (same device draws) from the new weights. Circuit effects that act per read (read noise,
ADC) are not injected during training; DAC input quantisation is, when the chip has a calibrated DAC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..chip.interface import Chip
from ..errors import NvcimError
from .base import Cost, Method, TaskData, register, shuffled_batches


class NoiseAwareTraining(Method):
    """Shared trainer. Subclasses choose the loss and the activation quantisers."""

    def __init__(self, epochs: int = 3, lr: float = 1e-3, batch_size: int = 128, censor: float = 0.0,
                 seed: int = 0) -> None:
        if epochs < 1:
            raise NvcimError(f"{self.name}.epochs = {epochs} is invalid: allowed >= 1")
        if not lr > 0:
            raise NvcimError(f"{self.name}.lr = {lr} is invalid: allowed > 0")
        if censor < 0:
            raise NvcimError(f"{self.name}.censor = {censor} is invalid: allowed 0 (off) or > 0 sigma")
        self.epochs, self.lr, self.batch_size, self.censor, self.seed = epochs, lr, batch_size, censor, seed

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The training loss of a batch; ``idx`` are the batch's indices into the training set."""
        return F.cross_entropy(logits, y)

    def prepare(self, chip: Chip, data: TaskData) -> dict:
        """Extra trainable state (e.g. quantiser steps) keyed by layer name: (Parameter, bits, signed)."""
        return {}

    def finish(self, chip: Chip, act_quant: dict) -> None:
        """Write learned state into the chips' periphery after re-programming."""

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        x, y = data.train
        if not isinstance(y, Tensor):
            raise NvcimError(f"{self.name} needs labelled training data")
        act_quant = self.prepare(chip, data)
        params = chip.parameters() + [p for p, _, _ in act_quant.values()]
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        steps = 0
        bar = tqdm(range(self.epochs), desc=self.name, unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            for idx in shuffled_batches(len(y), self.batch_size, gen):
                xb, yb = x[idx].to(chip.device), y[idx].to(chip.device)
                logits = chip.train_forward(xb, steps, censor=self.censor, act_quant=act_quant)
                loss = self.loss(logits, yb, idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        chip.program(data.inputs(256))
        self.finish(chip, act_quant)
        return Cost(labelled_samples=len(y), finetune_steps=steps,
                    notes=[f"{self.name}: {self.epochs} epochs of noise-injection training, chips re-programmed"])


@register
class VAT(NoiseAwareTraining):
    """Variation-aware (noise-injection) training with a fresh chip per batch; ``censor`` > 0 gives the
    right-censored Gaussian variant (Yan et al., ICCAD 2023, our reading: draws clipped at censor x sigma).

    Options: ``epochs``, ``lr``, ``batch_size``, ``censor`` (sigma units, 0 = off).
    """

    name = "vat"


@register
class KD(NoiseAwareTraining):
    """Knowledge-distillation model transfer (Charan et al. 2020): the FP model as teacher, the student
    trained under the chip's quantisation, faults and variation. Loss alpha CE + (1 - alpha) tau^2 KL.

    Options: ``tau`` (Charan: 2), ``alpha``, ``epochs``, ``lr``, ``batch_size``.
    """

    name = "kd"

    def __init__(self, tau: float = 2.0, alpha: float = 0.5, **kw: float) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if tau <= 0 or not 0 <= alpha <= 1:
            raise NvcimError(f"kd: tau = {tau} must be > 0 and alpha = {alpha} in [0, 1]")
        self.tau, self.alpha = tau, alpha
        self._teacher = torch.empty(0)

    def prepare(self, chip: Chip, data: TaskData) -> dict:
        # the teacher is the ideal model before training: its logits on the training set, once
        x = data.train[0]
        with torch.no_grad():
            self._teacher = torch.cat([chip.reference(x[i:i + 512]) for i in range(0, len(x), 512)])
        return {}

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        teacher = self._teacher[idx].to(logits)
        t = self.tau
        kl = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                      reduction="batchmean")
        return self.alpha * F.cross_entropy(logits, y) + (1 - self.alpha) * t * t * kl


@register
class QVAT(NoiseAwareTraining):
    """Joint quantization- and variability-aware training (Deng & Orshansky, DATE 2022): low-bit
    activations with learned step sizes at every analog layer's input, weights at the chip's levels,
    and both between-chip and within-chip variation injected. Learned steps set the chips' DAC ranges.

    Options: ``act_bits`` (default: the chip's DAC bits, else 4), ``epochs``, ``lr``, ``batch_size``.
    """

    name = "qvat"

    def __init__(self, act_bits: int = 0, **kw: float) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if act_bits and not 1 <= act_bits <= 16:
            raise NvcimError(f"qvat.act_bits = {act_bits} is invalid: allowed [1, 16]")
        self.act_bits = act_bits

    def prepare(self, chip: Chip, data: TaskData) -> dict:
        bits = self.act_bits or chip.config.circuit.dac_bits or 4
        inputs = {n: inp for n, (inp, _) in chip.reference_layer_io(data.inputs(256)).items()}
        quant = {}
        for name, v in inputs.items():
            signed = bool((v < 0).any())
            levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
            fs = v.abs().flatten().kthvalue(max(1, int(0.999 * v.numel()))).values.clamp_min(1e-8)
            quant[name] = (nn.Parameter(fs / levels), bits, signed)
        return quant

    def finish(self, chip: Chip, act_quant: dict) -> None:
        if not chip.config.circuit.dac_bits or chip.config.circuit.dac_range:
            return
        for name in chip.layer_names():
            step, bits, signed = act_quant[name]
            dac_bits, dac_signed, _ = chip.input_format(name)
            if bits == dac_bits and signed == dac_signed:
                levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
                chip.set_input_range(name, float(step.detach().abs().float() * levels))  # the float32 product
