"""Training-time methods: noise-aware training (VAT, with the right-censored variant), joint
quantization- and variability-aware training (QVAT), and knowledge-distillation model transfer (KD).

All three train the *ideal* weights with a freshly drawn chip in every forward pass (chip ids from a
range that never overlaps the evaluated chips): its levels, programming variation (within and between
chips), stuck-at faults with a fresh fault map, drift and IR drop, straight-through to the ideal weights.
Then they re-program the same N chips (same device draws) from the new weights, keeping the converter ranges
that the training chips read through (an ADC that training left out is re-calibrated). Read noise, which acts per
read, is not injected during training. DAC input quantisation is, when the chip has a calibrated DAC, and so
is the ADC when the option ``adc`` says so (on by default for ADCs of 6 bits or fewer): every array tile's
partial sum is then digitised, with straight-through gradients.

Training runs until it converges: after every epoch the model is validated on the held-out check inputs
(``TaskData.check``) on ``val_chips`` fixed validation chips (fresh draws that are neither training nor
evaluated chips), in evaluation mode. The learning rate halves after two epochs without a new best, training
stops after ``patience`` such epochs or at ``epochs`` (the budget), and the best validated weights are kept,
with the BatchNorm statistics of that epoch.
The cost report gives the epochs run. Without check inputs it trains the whole budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..chip.interface import Chip
from ..errors import NvcimError
from ..evaluation.task_metrics import Metric, TopK
from .base import Cost, Method, TaskData, register, shuffled_batches

ADC_CHOICES = ("auto", "on", "off")
INIT_CHOICES = ("model", "scratch")  # NoiseAwareTraining.init: fine-tune the given model, or start afresh
ADC_AUTO_BITS = 6  # "auto" trains through ADCs this coarse or coarser


def trains_through_adc(adc: str, chip: Chip) -> bool:
    """Whether training chips digitise each tile's partial sum: ``on``, ``off``, or ``auto``: when the chip's
    ADC has at most 6 bits. A finer ADC's step lies below the programming noise that training already
    injects (8 bits: 1/128 of the range), while the product per array tile that the ADC needs multiplies
    a training step's cost by up to the tile count (37 for ResNet-18's last layers)."""
    bits = chip.config.circuit.adc_bits
    return adc == "on" or (adc == "auto" and 0 < bits <= ADC_AUTO_BITS)


class NoiseAwareTraining(Method):
    """Shared trainer. Subclasses choose the loss and the activation quantisers."""

    changes_chip = False  # it changes the model, and every chip is programmed again from it
    needs_labels = True  # type: ignore[assignment]

    def __init__(self, epochs: int = 30, lr: float = 1e-3, batch_size: int = 0, censor: float = 0.0,
                 seed: int = 0, patience: int = 4, val_chips: int = 8, adc: str = "auto",
                 init: str = "model") -> None:
        if epochs < 1:
            raise NvcimError(f"{self.name}.epochs = {epochs} is invalid: allowed >= 1")
        if not lr > 0:
            raise NvcimError(f"{self.name}.lr = {lr} is invalid: allowed > 0")
        if censor < 0:
            raise NvcimError(f"{self.name}.censor = {censor} is invalid: allowed 0 (off) or > 0 sigma")
        if batch_size < 0:
            raise NvcimError(f"{self.name}.batch_size = {batch_size} is invalid: allowed 0 (auto) or >= 1")
        if patience < 0 or val_chips < 1:
            raise NvcimError(f"{self.name}: patience = {patience} must be >= 0 (0: train the whole budget) and "
                             f"val_chips = {val_chips} >= 1")
        if adc not in ADC_CHOICES:
            raise NvcimError(f"{self.name}.adc = {adc!r} is invalid: allowed {', '.join(ADC_CHOICES)}")
        if init not in INIT_CHOICES:
            raise NvcimError(f"{self.name}.init = {init!r} is invalid: allowed {', '.join(INIT_CHOICES)}")
        self.init = init
        self.epochs, self.lr, self.batch_size, self.censor, self.seed = epochs, lr, batch_size, censor, seed
        self.adc = adc
        self.patience, self.val_chips = patience, val_chips
        self.history: list[float] = []  # validation accuracy (or the task's metric) after each epoch
        self._task: Metric = TopK(1)
        self._adc_now = False

    def loss(self, logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """The training loss of a batch; ``idx`` are the batch's indices into the training set."""
        return self._task.loss(logits, y)

    def prepare(self, chip: Chip, data: TaskData) -> dict:
        """Extra trainable state (e.g. quantiser steps) keyed by layer name: (Parameter, bits, signed)."""
        return {}

    def finish(self, chip: Chip, act_quant: dict) -> None:
        """Write learned state into the chips' periphery after re-programming."""

    @torch.no_grad()
    def validate(self, chip: Chip, check: tuple[Tensor, Tensor], act_quant: dict) -> float:
        """Mean accuracy (or the task's metric) on ``check`` over the fixed validation chips (steps -1, -2, ...:
        never a training step), in evaluation mode."""
        x, y = check
        if not isinstance(self._task, TopK):
            total, count = torch.zeros(self.val_chips, dtype=torch.float64), 0.0
            for i in range(0, len(y), 256):
                outs = torch.stack([chip.train_forward(x[i:i + 256].to(chip.device), -1 - j, censor=0.0,
                                                       act_quant=act_quant, train=False, adc=self._adc_now)
                                    for j in range(self.val_chips)])
                sums, n = self._task.batch(outs, y[i:i + 256].to(outs.device))
                total, count = total + sums, count + n
            return float(self._task.finish(total, count).mean())
        hits = 0
        for j in range(self.val_chips):
            for i in range(0, len(y), 256):
                out = chip.train_forward(x[i:i + 256].to(chip.device), -1 - j, censor=0.0, act_quant=act_quant,
                                         train=False, adc=self._adc_now)
                hits += int((out.argmax(-1).cpu() == y[i:i + 256]).sum())
        return hits / (len(y) * self.val_chips)

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        x, y = data.train
        if not isinstance(y, Tensor):
            raise NvcimError(f"{self.name} needs labelled training data")
        self._task = data.task
        sign = 1.0 if self._task.higher_is_better else -1.0  # validation scores compared as "higher is better"
        act_quant = self.prepare(chip, data)  # before a fresh start: KD's teacher is the model as given
        if self.init == "scratch":
            chip.reinitialize(self.seed)
        self._adc_now = trains_through_adc(self.adc, chip)
        params = chip.parameters() + [p for p, _, _ in act_quant.values()]
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        # auto: at least ~50 steps per epoch on small data sets (measured on digits, 1 223 examples: batches
        # of 24 recover 0.42 of the loss where batches of 128, 10 steps an epoch, recover 0.26), at most 128
        batch = self.batch_size or min(128, max(16, len(y) // 50))
        check = data.check if data.check is not None and len(data.check[1]) else None
        steps, since_best, flat, best, best_epoch = 0, 0, 0, -1.0, -1
        # the best epoch is its parameters and the BatchNorm statistics that went with them: the statistics
        # of later epochs belong to later weights
        state = params + chip.buffers()
        best_state = [t.detach().clone() for t in state]
        self.history = []
        bar = tqdm(range(self.epochs), desc=self.name, unit="epoch", disable=not progress, leave=False)
        for _ in bar:
            for idx in shuffled_batches(len(y), batch, gen):
                xb, yb = x[idx].to(chip.device), y[idx].to(chip.device)
                logits = chip.train_forward(xb, steps, censor=self.censor, act_quant=act_quant, adc=self._adc_now)
                loss = self.loss(logits, yb, idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            if check is None:
                continue
            acc = self.validate(chip, check, act_quant)
            self.history.append(acc)
            bar.set_postfix(val=self._task.format(acc))
            if best_epoch < 0 or sign * acc > sign * best:
                best, best_epoch, since_best, flat = acc, len(self.history), 0, 0
                best_state = [t.detach().clone() for t in state]
            else:
                since_best, flat = since_best + 1, flat + 1
                if flat == 2:  # a plateau: a smaller step (ReduceLROnPlateau with patience 2)
                    flat = 0
                    for group in opt.param_groups:
                        group["lr"] *= 0.5
                if self.patience and since_best >= self.patience:
                    break
        if check is not None:
            with torch.no_grad():
                for t, b in zip(state, best_state):
                    t.copy_(b)
        # The converter ranges are part of what was trained: the training chips read through the DAC ranges
        # (and, trained through it, the ADC ranges) of the chips as they were, and the new weights rely on
        # them, clipping included. Re-calibrating them on the new weights undid that (Han "all but faults",
        # 4 epochs: 82 % kept, 55 % re-calibrated; bench/bench_ranges.py). An ADC that training did not read
        # through is re-calibrated to the new weights' partial sums, on the kept DAC ranges.
        keep_adc = self._adc_now or not chip.config.circuit.adc_bits
        chip.program(None if keep_adc else data.inputs(256), converters="adc")
        self.finish(chip, act_quant)
        epochs = len(self.history) if check is not None else self.epochs
        start = " from a fresh initialisation" if self.init == "scratch" else ""
        how = (f"{epochs} epochs (best validated {self._task.format(best)} after epoch "
               f"{best_epoch} on {self.val_chips} validation chips)" if check is not None
               else f"{epochs} epochs (no check inputs: no validation)")
        return Cost(labelled_samples=len(y) + (len(check[1]) if check is not None else 0), finetune_steps=steps,
                    epochs=float(epochs), check_samples=len(check[1]) if check is not None else 0,
                    notes=[f"{self.name}: {how} of noise-injection training{start}"
                           + (", through the ADC" if self._adc_now else "") + ", chips re-programmed"])


@register
class VAT(NoiseAwareTraining):
    """Variation-aware (noise-injection) training with a fresh chip per batch; ``censor`` > 0 gives the
    right-censored Gaussian variant (Yan et al., ICCAD 2023, our reading: each weight's programming error is
    clipped above at censor x sigma and left as drawn below; on a differential pair the pos cell's draws are
    clipped above and the neg cell's below).

    Options: ``epochs`` (the budget), ``patience`` (epochs without a better validation before stopping; 0: the
    whole budget), ``val_chips``, ``lr``, ``batch_size``, ``censor`` (sigma units, 0 = off), ``adc`` (auto,
    on, off: training chips digitise each array tile's partial sum with the chip's ADC; auto: for ADCs of
    6 bits or fewer, see :func:`trains_through_adc`), ``init`` (model: fine-tune the model as given;
    scratch: train a freshly initialised model, as Charan's student is; kd's teacher stays the model as
    given). ``adc`` and ``init`` apply to kd and qvat too.
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
        # per predicted distribution: per example for a classifier (batchmean), per position for a language model
        kl = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                      reduction="sum") / (logits.numel() // logits.shape[-1])
        return self.alpha * self._task.loss(logits, y) + (1 - self.alpha) * t * t * kl


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
