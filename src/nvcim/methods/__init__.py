"""Accuracy-recovery methods behind one interface: ``nvcim.methods.get(name, **options)``.

Implemented: ``vat`` (and right-censored), ``qvat``, ``kd``, ``write-verify`` (full and SWIM-selective), ``rsa``,
``map-correct``, ``chip-kd``, ``auto`` (tries chains, keeps the best for its cost),
``self-tune``. Composition: ``recover(model,
["write-verify", "self-tune"], data, test)``.
"""

from . import auto, chip_kd, map_correct, rsa, self_tune, training, write_verify  # noqa: F401  (registration)
from .base import Cost, Method, RecoveryReport, TaskData, get, names, recover, register

__all__ = ["Cost", "Method", "RecoveryReport", "TaskData", "get", "names", "recover", "register"]
