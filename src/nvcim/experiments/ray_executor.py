"""Spread grid points over a Ray cluster (optional extra: ``pip install 'nvcim[ray]'``).

Each grid point is one Ray task running :func:`~nvcim.experiments.runner.compute_point`, the same function
the local executor runs, so the results are identical for the same seeds. The driver alone writes the
store, as each task finishes. Tasks ask for a GPU when the cluster has one. With no address a local
cluster is started on this machine. For Slurm or Kubernetes, start the cluster with Ray's own tools
(``ray start`` in the batch script, or KubeRay) and pass its address; see docs/user-guide.md.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import NvcimError
from .spec import Point


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise NvcimError("the Ray executor needs Ray: pip install 'nvcim[ray]'") from None
    return ray


def _task(point: Point) -> tuple[dict[str, Any], float, float]:
    import torch

    from .runner import compute_point

    t0, started = time.perf_counter(), time.time()
    result = compute_point(point, "cuda" if torch.cuda.is_available() else "cpu")
    return result, started, time.perf_counter() - t0


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when a host:port address does not answer (Ray itself retries for
    minutes). Other forms ('auto', 'local') go to Ray unchanged."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise NvcimError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}. Start it with "
                         "`ray start --head` (see docs/user-guide.md) or leave --address out for a local one") from None


class RayExecutor:
    """Callable executor: ``run(exp, dir, executor=RayExecutor(address))``."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, window: int = 0) -> None:
        self.address, self.num_cpus, self.window = address, num_cpus, window

    def __call__(self, points: Iterable[Point]) -> Iterator[tuple[Point, dict[str, Any], float, float]]:
        ray = _ray()
        started_here = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                _probe(self.address)
                kwargs["address"] = self.address
            elif self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise NvcimError(f"cannot start or reach the Ray cluster {self.address or '(local)'}: {e}") from None
            started_here = True
        try:
            res = ray.cluster_resources()
            gpus = 1 if res.get("GPU", 0) >= 1 else 0
            remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(_task)
            window = self.window or max(2, 2 * int(res.get("CPU", 1)))
            pending: dict[Any, Point] = {}
            queue = iter(points)
            more = True
            while more or pending:
                while more and len(pending) < window:
                    p = next(queue, None)
                    if p is None:
                        more = False
                        break
                    pending[remote.remote(p)] = p
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    p = pending.pop(ref)
                    try:
                        result, started, secs = ray.get(ref)
                    except Exception as e:  # a RayTaskError wraps the worker's exception
                        cause = getattr(e, "cause", None) or e
                        raise NvcimError(f"grid point '{p.label()}' failed on a Ray worker: "
                                         f"{type(cause).__name__}: {cause}") from None
                    yield p, result, started, secs
        finally:
            if started_here:
                ray.shutdown()
