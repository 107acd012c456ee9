"""Admission control for inference.

MONAI Label 0.8.5 declares its handlers ``async`` but does the work synchronously inside them, so
one inference blocks the whole server: ``/info`` and every other request wait behind it (measured:
up to 1.7 s on the sample studies, the whole inference time for a CT).  The app's own routes
(:mod:`radcascade.serving.routes`) are synchronous handlers, which FastAPI runs in its worker
threads, so the event loop keeps answering ``/info``, Next sample and downloads while a network runs.

Inference is also admitted, not just queued: ``slots`` requests compute at once (on a CPU one is
fastest, torch already uses every core), ``queue`` more may wait, anything beyond gets
**429 Too Many Requests** with ``Retry-After`` at once, and a request that waited longer than
``wait_s`` gets **503** with ``Retry-After`` instead of hanging the client.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from fastapi import HTTPException

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionPolicy:
    """How many inferences run at once, how many may wait, and how long."""

    slots: int = 1
    queue: int = 8
    wait_s: float = 120.0

    @classmethod
    def from_conf(cls, conf: dict) -> "AdmissionPolicy":
        policy = cls(int(conf.get("infer_slots", cls.slots)), int(conf.get("infer_queue", cls.queue)),
                     float(conf.get("infer_wait_s", cls.wait_s)))
        if policy.slots < 1 or policy.queue < 0 or policy.wait_s <= 0:
            raise ValueError(f"invalid admission policy {policy}: need infer_slots >= 1, infer_queue >= 0, "
                             "infer_wait_s > 0")
        return policy


@dataclass(frozen=True)
class AdmissionStats:
    running: int
    waiting: int
    admitted: int
    refused_busy: int
    timed_out: int
    mean_service_s: float


class Admission:
    """A counting gate in front of inference: run, wait (bounded) or be refused with a clear answer."""

    def __init__(self, policy: AdmissionPolicy):
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.slots)
        self._lock = threading.Lock()
        self._running = 0
        self._waiting = 0
        self._admitted = 0
        self._refused = 0
        self._timed_out = 0
        self._service_s = 0.0  # exponential moving average of a request's compute time

    def _retry_after_s(self) -> int:
        per_request = self._service_s or 5.0
        backlog = self._running + self._waiting
        return max(1, math.ceil(per_request * (backlog + 1) / self.policy.slots))

    @contextlib.contextmanager
    def admit(self, what: str = "inference") -> Iterator[None]:
        with self._lock:
            if self._slots.acquire(blocking=False):
                self._running += 1
                acquired = True
            elif self._waiting >= self.policy.queue:
                self._refused += 1
                retry = self._retry_after_s()
                raise HTTPException(
                    status_code=429, headers={"Retry-After": str(retry)},
                    detail=f"server busy: {self._running} {what}(s) running and {self._waiting} waiting "
                           f"(limit {self.policy.queue}); retry in about {retry} s")
            else:
                self._waiting += 1
                acquired = False
        if not acquired:
            got = self._slots.acquire(timeout=self.policy.wait_s)
            with self._lock:
                self._waiting -= 1
                if got:
                    self._running += 1
                else:
                    self._timed_out += 1
                    retry = self._retry_after_s()
            if not got:
                raise HTTPException(
                    status_code=503, headers={"Retry-After": str(retry)},
                    detail=f"server busy: waited {self.policy.wait_s:.0f} s for a free {what} slot; "
                           f"retry in about {retry} s")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            with self._lock:
                self._running -= 1
                self._admitted += 1
                self._service_s = elapsed if not self._service_s else 0.8 * self._service_s + 0.2 * elapsed
            self._slots.release()

    def stats(self) -> AdmissionStats:
        with self._lock:
            return AdmissionStats(self._running, self._waiting, self._admitted, self._refused, self._timed_out,
                                  round(self._service_s, 3))
