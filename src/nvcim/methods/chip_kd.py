"""On-chip fine-tuning by knowledge distillation (after Lv, Zhang & Wang, TCAD 2024; our design).

Hardware in the loop: each step runs a batch of unlabelled inputs on every chip and on the ideal model
(the teacher), and updates the chip's digital parameters — each analog layer's per-chip, per-column gain
and offset registers — to minimise tau^2 KL(teacher || chip) on the logits plus ``beta`` times the mean
squared error of the measurable layer outputs. With ``rewrite`` > 0 it first re-programs cells within a
write budget: map-correct's partner step (read back, per-array write gain, one write per cell) on the
``rewrite`` fraction of each layer's pairs whose write is predicted to gain most, before the registers are
tuned (after Lv et al.'s write-budgeted re-programming; the selection is ours).

Simplification: gradients come from the simulator's autograd through the chip forward (straight-through
for the converters). It uses the chips' true conductances, where a real deployment would back-propagate
through a surrogate built from read-back conductances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..chip.interface import Chip
from ..errors import NvcimError
from .base import Cost, Method, TaskData, register


@register
class ChipKD(Method):
    """Fine-tune every chip's digital gain/offset registers by distillation from the ideal model; no labels.

    Options: ``steps``, ``batch_size``, ``lr``, ``tau``, ``beta`` (layer-output term), ``samples``, ``rewrite``
    (fraction of each layer's cell pairs re-programmed first, 0 to 1; default 0: registers only).
    """

    name = "chip-kd"
    needs_labels = False  # type: ignore[assignment]  # unlabelled inputs (and the ideal model) only

    def __init__(self, steps: int = 150, batch_size: int = 64, lr: float = 5e-3, tau: float = 2.0,
                 beta: float = 0.0, samples: int = 1024, seed: int = 0, rewrite: float = 0.0) -> None:
        if steps < 1 or batch_size < 1 or lr <= 0 or tau <= 0 or beta < 0 or samples < 1:
            raise NvcimError("chip-kd: steps, batch_size, samples >= 1; lr, tau > 0; beta >= 0")
        if not 0 <= rewrite <= 1:
            raise NvcimError(f"chip-kd.rewrite = {rewrite} is invalid: allowed 0 to 1 (fraction of each layer's "
                             "cell pairs re-programmed)")
        self.rewrite = rewrite
        self.steps, self.batch_size, self.lr, self.tau, self.beta, self.samples, self.seed = (
            steps, batch_size, lr, tau, beta, samples, seed)

    def apply(self, chip: Chip, data: TaskData, progress: bool = False) -> Cost:
        written = Cost()
        if self.rewrite:
            from .map_correct import MapCorrect

            written = MapCorrect(column=False, ir=False, budget=self.rewrite).apply(chip, data)
            written.notes = [f"chip-kd: partner re-programming of at most {100 * self.rewrite:g} % of each layer's "
                             "pairs first"]
        x = data.inputs(self.samples)
        names = chip.layer_names()
        registers = {}
        for name in names:  # the registers, set from trainable tensors: infer is differentiable in them
            gain, offset = (t.requires_grad_(True) for t in chip.output_affine(name))
            registers[name] = (gain, offset)
            chip.set_output_affine(name, gain, offset)
        opt = torch.optim.Adam([t for pair in registers.values() for t in pair], lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        t = self.tau
        try:
            for _ in tqdm(range(self.steps), desc="chip-kd", disable=not progress, leave=False):
                idx = torch.randint(0, x.shape[0], (self.batch_size,), generator=gen)
                xb = x[idx].to(chip.device)
                for name, (gain, offset) in registers.items():
                    chip.set_output_affine(name, gain, offset)
                with torch.no_grad():
                    teacher = chip.reference(xb)
                logits, outs = chip.infer(xb, capture=names if self.beta else ())
                student = F.log_softmax(logits / t, -1).flatten(0, 1)  # (chips B, ..., classes or vocab)
                # per predicted distribution (batchmean for a classifier; per position for a language model)
                target = F.log_softmax(teacher / t, -1).repeat(chip.n_chips, *([1] * (teacher.dim() - 1)))
                per = student.numel() // student.shape[-1]
                kl = F.kl_div(student, target, log_target=True, reduction="sum") / per
                loss = t * t * kl * chip.n_chips  # per-chip losses summed: independent registers
                if self.beta:
                    ref = {n: out for n, (_, out) in chip.reference_layer_io(xb).items()}
                    loss = loss + self.beta * sum(((outs[n] - ref[n]) ** 2).mean() for n in names) * chip.n_chips
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for name, (gain, offset) in registers.items():
                chip.set_output_affine(name, gain.detach(), offset.detach())
        return written + Cost(calibration_samples=int(x.shape[0]), finetune_steps=self.steps,
                              notes=[f"chip-kd: {self.steps} on-chip distillation steps on the gain/offset registers"])
