"""Fault injection: make the next API requests fail, hang or lose their connection.

Delivery code must survive a PX outage, a 429 storm and a connection dropped mid
request; tests arrange those here instead of mocking the HTTP client. A plan posted
to ``/_control/faults`` replaces the previous one; ``{}`` clears it.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Literal

from px_middleware.tools.devserver.errors import ApiError


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    #: The next N API requests answer ``status`` and store nothing.
    fail_next: int = 0
    status: int = 503
    #: ``Retry-After`` sent with those failures: seconds, or an HTTP date as a string.
    retry_after: int | float | str | None = None
    #: Added to every API request until the plan changes.
    latency_ms: float = 0
    #: The next N API requests get their connection closed without any response;
    #: these come before ``fail_next`` ones.
    close_next: int = 0
    #: The next ``slow_next`` requests whose path is exactly ``slow_path`` (one id's
    #: ``/v1/users/u7``, say) are answered ``slow_ms`` late; the others are not.
    slow_path: str | None = None
    slow_ms: float = 0
    slow_next: int = 0

    @classmethod
    def from_json(cls, body: Any) -> FaultPlan:
        if not isinstance(body, dict):
            raise ApiError(400, "the fault plan must be a JSON object")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ApiError(400, f"unknown fault fields {unknown}; known: {sorted(known)}")
        plan = cls(**body)
        errors = []
        for name in ("fail_next", "close_next", "slow_next"):
            value = getattr(plan, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errors.append(f"{name} must be an integer >= 0")
        if not isinstance(plan.status, int) or not 100 <= plan.status <= 599:
            errors.append("status must be an HTTP status code")
        retry = plan.retry_after
        if retry is not None and (
            isinstance(retry, bool)
            or not isinstance(retry, (int, float, str))
            or (not isinstance(retry, str) and retry < 0)
        ):
            errors.append("retry_after must be null, seconds >= 0 or an HTTP date string")
        for name in ("latency_ms", "slow_ms"):
            value = getattr(plan, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(f"{name} must be a number >= 0")
        if plan.slow_path is not None and not isinstance(plan.slow_path, str):
            errors.append("slow_path must be a request path such as /v1/users/u7")
        if errors:
            raise ApiError(400, errors)
        return plan

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Failure:
    status: int
    retry_after: str | None


class Faults:
    """The plan in force; counters are consumed under a lock, one per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan = FaultPlan()

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    def set(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan

    def delay_for(self, path: str) -> float:
        """Seconds to hold a request to ``path`` before answering it (latency + slow)."""
        with self._lock:
            plan = self._plan
            delay = plan.latency_ms
            if plan.slow_next and path == plan.slow_path:
                self._plan = dataclasses.replace(plan, slow_next=plan.slow_next - 1)
                delay += plan.slow_ms
            return delay / 1000

    def take(self) -> Literal["close"] | Failure | None:
        """What to do to the request arriving now."""
        with self._lock:
            plan = self._plan
            if plan.close_next:
                self._plan = dataclasses.replace(plan, close_next=plan.close_next - 1)
                return "close"
            if plan.fail_next:
                self._plan = dataclasses.replace(plan, fail_next=plan.fail_next - 1)
                return Failure(plan.status, _retry_after_header(plan.retry_after))
            return None


def _retry_after_header(value: int | float | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)
