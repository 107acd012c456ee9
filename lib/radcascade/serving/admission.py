"""Admission control for the slow endpoints, and keeping the event loop free while they run.

MONAI Label 0.8.5 declares its handlers ``async`` but does the work synchronously inside them, so
one inference blocks the whole server: ``/info`` and every other request wait behind it (measured:
up to 1.7 s on the sample studies, the whole inference time for a CT).  The app replaces those
routes, in place, with thin synchronous twins (same path, same parameters, same MONAI Label
function underneath): FastAPI runs synchronous handlers in its worker threads, so the event loop
keeps answering ``/info``, Next sample and downloads while a network runs.

Inference is also admitted, not just queued: ``slots`` requests compute at once (on a CPU one is
fastest, torch already uses every core), ``queue`` more may wait, anything beyond gets
**429 Too Many Requests** with ``Retry-After`` at once, and a request that waited longer than
``wait_s`` gets **503** with ``Retry-After`` instead of hanging the client.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from fastapi import BackgroundTasks, HTTPException
from fastapi.routing import APIRoute

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


def _run_cleanups(tasks: BackgroundTasks | None) -> None:
    """MONAI Label removes uploaded temporary files in background tasks, which FastAPI runs only
    after a successful response: on an error they would stay in the temp folder forever."""
    for task in list(tasks.tasks) if tasks is not None else []:
        try:
            task.func(*task.args, **task.kwargs)
        except Exception as e:  # noqa: BLE001 - a failed clean-up must not hide the request's error
            logger.warning("clean-up after a failed request: %s", e)
    if tasks is not None:
        tasks.tasks.clear()


def threaded_twin(endpoint: Callable, implementation: Callable, gate: Admission | None = None) -> Callable:
    """A synchronous handler with ``endpoint``'s parameters that calls ``implementation``.

    ``implementation`` is the synchronous MONAI Label function the ``async`` endpoint wraps; it takes
    the same arguments minus the authenticated ``user`` (which FastAPI still resolves, so MONAI
    Label's role checks keep working).
    """
    signature = inspect.signature(endpoint)
    accepted = set(inspect.signature(implementation).parameters)

    def handler(**kwargs):
        args = {k: v for k, v in kwargs.items() if k in accepted}
        if "user" in args:  # the implementations take the user's name, the endpoints the user
            args["user"] = getattr(args["user"], "username", args["user"])
        try:
            with gate.admit() if gate is not None else contextlib.nullcontext():
                return implementation(**args)
        except BaseException:
            _run_cleanups(kwargs.get("background_tasks"))
            raise

    handler.__signature__ = signature  # FastAPI reads the parameters from here
    handler.__name__ = f"threaded_{endpoint.__name__}"
    handler.__doc__ = endpoint.__doc__
    return handler


Replacements = dict[tuple[str, str], tuple[Callable, "Admission | None"]]


def _swap_in(routes: list, replacements: Replacements, prefix: str) -> list[str]:
    done = []
    for i, route in enumerate(list(routes)):
        if not isinstance(route, APIRoute) or route.endpoint.__name__.startswith("threaded_"):
            continue
        for method in route.methods:
            target = replacements.get((method, route.path[len(prefix):] if route.path.startswith(prefix) else None))
            if target is None:
                continue
            implementation, gate = target
            routes[i] = APIRoute(
                route.path, threaded_twin(route.endpoint, implementation, gate), methods=[method],
                summary=route.summary, description=route.description, tags=route.tags,
                response_class=route.response_class, include_in_schema=route.include_in_schema,
                name=route.name, dependencies=route.dependencies,
            )
            done.append(f"{method} {route.path}")
    return done


def replace_routes(app, routers: list, replacements: Replacements, api_prefix: str = "") -> list[str]:
    """Swap ``(METHOD, path)`` routes for threaded twins, in place (same position, same parameters).

    FastAPI up to 0.11x copies an included router's routes into the app; newer releases keep the
    included ``APIRouter`` and resolve its routes lazily.  Both places are searched, and a router
    whose routes changed is told so.  A route not found (another MONAI Label version) is logged
    and left as it is.
    """
    done = _swap_in(app.router.routes, replacements, api_prefix)
    for router in routers:
        swapped = _swap_in(router.routes, replacements, "")
        if swapped and hasattr(router, "_mark_routes_changed"):
            router._mark_routes_changed()
        done += swapped
    missing = {f"{m} {p}" for m, p in replacements} - {d.replace(f" {api_prefix}", " ", 1) for d in done}
    if missing:
        logger.warning("routes not found, left blocking the event loop: %s", ", ".join(sorted(missing)))
    app.openapi_schema = None
    return done


def install_nonblocking_routes(app, gate: Admission) -> list[str]:
    """Threaded twins for the endpoints that do heavy work: inference (admitted through ``gate``),
    label and image uploads (validated and written in full), and in-server scoring."""
    from monailabel.config import settings
    from monailabel.endpoints import activelearning, datastore, infer, scoring

    return replace_routes(app, [infer.router, datastore.router, scoring.router, activelearning.router], {
        ("POST", "/infer/{model}"): (infer.run_inference, gate),
        ("POST", "/activelearning/{strategy}"): (activelearning.sample, None),  # may run the cascade
        ("PUT", "/datastore/label"): (datastore.save_label, None),
        ("PUT", "/datastore/image"): (datastore.add_image, None),
        ("POST", "/scoring/{method}"): (scoring.run_method, None),
    }, settings.MONAI_LABEL_API_STR)
