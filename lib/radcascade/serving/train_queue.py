"""Training requests: checked options, a bounded queue, and a hard upper limit on training time.

MONAI Label queues training runs without bound (each one a subprocess re-creating the app), starts
one for a trainer name nobody registered, and lets ``max_minutes: 0`` mean "no limit". Here:

* options are checked against the trainer's own defaults (type and range) before anything starts;
* at most ``queue`` runs wait behind the running one; beyond that **429** with ``Retry-After``;
* a run (subprocess) older than ``time_limit_min`` (plus a grace for saving) is killed by a
  watchdog, whatever its options say; ``max_minutes`` must lie in ``(0, time_limit_min]``;
* ``DELETE /train`` stops the running run **and** every queued one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
from fastapi import HTTPException

from radcascade.serving.errors import client_error

logger = logging.getLogger(__name__)

GRACE_S = 300  # time a run gets past its limit to finish an epoch and publish


@dataclass(frozen=True)
class TrainPolicy:
    """How many training runs may wait, and how long one may run (minutes)."""

    queue: int = 1
    time_limit_min: float = 240.0

    @classmethod
    def from_conf(cls, conf: dict) -> "TrainPolicy":
        policy = cls(int(conf.get("train_queue", cls.queue)),
                     float(conf.get("train_time_limit_minutes", cls.time_limit_min)))
        if policy.queue < 0 or not (math.isfinite(policy.time_limit_min) and policy.time_limit_min > 0):
            raise ValueError(f"invalid training policy {policy}: need train_queue >= 0, "
                             "train_time_limit_minutes > 0")
        return policy


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` in the type of the trainer's default for ``key``, or a 422 naming the option."""
    def bad(expected: str) -> HTTPException:
        return client_error(422, f"train option '{key}' must be {expected}, not {str(value)[:40]!r}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise bad("true or false")
    if isinstance(default, (int, float)):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or abs(number) > 1e9:
            raise bad("a finite number")
        if isinstance(default, int):
            if not number.is_integer():
                raise bad("an integer")
            return int(number)
        return number
    if isinstance(default, str) or default is None:
        if isinstance(value, (dict, list)) or len(str(value)) > 256:
            raise bad("a short text")
        return value
    return value


def check_train_options(defaults: dict, params: dict, policy: TrainPolicy) -> dict:
    """``params`` with every option the trainer knows checked against its default's type; counts
    (epochs, minutes) must be positive and ``max_minutes`` within the hard limit."""
    out = dict(params)
    for key, default in defaults.items():
        if key not in params:
            continue
        value = _coerce(key, params[key], default)
        if key in ("max_epochs", "max_minutes", "learning_rate") and value <= 0:
            raise client_error(422, f"train option '{key}' must be positive, not {value}")
        if key == "max_minutes" and value > policy.time_limit_min:
            raise client_error(422, f"train option 'max_minutes' {value:g} exceeds the server's limit of "
                                    f"{policy.time_limit_min:g} (--conf train_time_limit_minutes)")
        if key == "val_split" and not 0 <= value < 1:
            raise client_error(422, f"train option 'val_split' must lie in [0, 1), not {value}")
        out[key] = value
    return out


class TrainQueue:
    """Admission for ``/train`` over MONAI Label's background tasks, and the time-limit watchdog."""

    def __init__(self, policy: TrainPolicy, tasks: Callable[[], list], processes: Callable[[], dict],
                 stop_one: Callable[[], Any]):
        self.policy = policy
        self._tasks = tasks  # MONAI Label's task records for "train" (dicts with id/status/...)
        self._processes = processes  # task id -> running subprocess
        self._stop_one = stop_one
        self._lock = threading.Lock()
        self._sync_runs = 0
        self._watchdog: threading.Thread | None = None

    def _submitted(self) -> int:
        return sum(1 for t in self._tasks() if t.get("status") == "SUBMITTED")

    def running(self) -> int:
        """Runs in progress; a submitted run with nothing running is about to start, so it counts here."""
        started = len(self._processes()) + self._sync_runs
        return started or min(1, self._submitted())

    def waiting(self) -> int:
        """Runs queued behind the running one."""
        started = len(self._processes()) + self._sync_runs
        return self._submitted() - (0 if started else min(1, self._submitted()))

    def _busy(self, why: str) -> HTTPException:
        retry = 60
        return HTTPException(status_code=429, headers={"Retry-After": str(retry)},
                             detail=f"training busy: {why}; retry later or stop it (DELETE /train/)")

    def _admit(self, enqueue: bool) -> None:
        """Raise 429 unless a new run may start now (or wait, with ``enqueue``, within the queue)."""
        running, waiting = self.running(), self.waiting()
        if running and not enqueue:
            raise self._busy(f"{running} run in progress (send enqueue=true to wait for it)")
        if waiting >= self.policy.queue and (running or waiting):
            raise self._busy(f"{waiting} run(s) already waiting (limit {self.policy.queue})")

    def start(self, enqueue: bool, submit: Callable[[], Any]) -> Any:
        """Submit a background run (``submit``) if the queue has room."""
        with self._lock:
            self._admit(enqueue)
            return submit()

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the calling (worker) thread when nothing else trains."""
        with self._lock:
            if self.running() or self.waiting():
                raise self._busy(f"{self.running()} run(s) in progress and {self.waiting()} waiting")
            self._sync_runs += 1
        try:
            return fn()
        finally:
            with self._lock:
                self._sync_runs -= 1

    def stop_all(self, wait_s: float = 10.0) -> dict:
        """Stop the running run, then each queued one as it starts; the first stopped task, with a count."""
        stopped = []
        for _ in range(self.policy.queue + 2):
            task = self._stop_one()
            if task:
                stopped.append(task)
            if not self._submitted():
                break
            deadline = time.monotonic() + wait_s  # the executor starts the next queued run
            while not self._processes() and self._submitted() and time.monotonic() < deadline:
                time.sleep(0.05)
        if not stopped:
            return {}
        return {**stopped[0], "stopped": len(stopped)}

    # -- hard time limit -------------------------------------------------------------------------
    def start_watchdog(self, every_s: float = 5.0) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, args=(every_s,), name="train-time-limit",
                                              daemon=True)
            self._watchdog.start()

    def _watch(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            try:
                self.enforce_time_limit()
            except Exception as e:  # noqa: BLE001 - the watchdog must outlive one bad look
                logger.warning("training watchdog: %s", e)

    def enforce_time_limit(self, now: float | None = None) -> list[str]:
        """Kill every training subprocess running longer than the limit (plus grace); their ids."""
        limit_s = self.policy.time_limit_min * 60 + GRACE_S
        now = time.time() if now is None else now
        killed = []
        for task_id, process in list(self._processes().items()):
            try:
                proc = psutil.Process(process.pid)
                if now - proc.create_time() <= limit_s:
                    continue
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()
            except psutil.NoSuchProcess:
                continue
            for task in self._tasks():
                if task.get("id") == task_id:
                    task["status"] = "STOPPED"
                    details = task.get("details")
                    if details is not None:
                        details.append(f"stopped: ran longer than the limit of {self.policy.time_limit_min:g} min")
            logger.warning("training run %s killed: longer than %g min", task_id, self.policy.time_limit_min)
            killed.append(task_id)
        return killed
