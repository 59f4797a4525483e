"""The worker's own read-only web views: /healthz, /readyz, /status and /explain."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tagger.rules.explain import explain, explanation_to_json, render_text
from tagger.rules.state import decode_state
from tagger.streams.config import Settings
from tagger.streams.partitioning import partition_for

if TYPE_CHECKING:
    from tagger.streams.app import TaggerRuntime

__all__ = [
    "explain_customer",
    "readiness",
    "register_views",
    "require_bearer_token",
    "status",
    "web_application_options",
]

# Liveness probes (Kubernetes, docker-compose) send no credentials.
_OPEN_PATHS = frozenset({"/healthz"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def web_application_options(settings: Settings) -> dict[str, Any]:
    """Return Faust's `web_application_options`: the token check when TAGGER_WEB_TOKEN is set."""
    if settings.web_token is None:
        return {}
    return {"middlewares": [require_bearer_token(settings.web_token.reveal())]}


def require_bearer_token(token: str) -> Any:
    """Build an aiohttp middleware that returns 401 unless `Authorization: Bearer <token>`.

    Every path except /healthz requires the token, /metrics included.
    """
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check_token(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path in _OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        # A constant-time comparison, so response times reveal nothing of the token.
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {
                    "error": "missing or invalid bearer token: send Authorization: "
                    "Bearer <token>; tagger explain sends TAGGER_WEB_TOKEN"
                },
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check_token


def register_views(runtime: TaggerRuntime) -> None:
    """Add the views to the runtime's Faust app."""
    app = runtime.app

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ready, reasons = readiness(runtime)
        return self.json({"ready": ready, "reasons": reasons}, status=200 if ready else 503)

    @app.page("/explain/{customer}")
    async def explain_view(self: Any, request: Any, customer: str) -> Any:
        status, body = explain_customer(runtime, customer, request.query.get("tag"))
        return self.json(body, status=status)

    @app.page("/status")
    async def status_view(self: Any, request: Any) -> Any:
        return self.json(status(runtime))


def explain_customer(
    runtime: TaggerRuntime, customer: str, tag: str | None
) -> tuple[int, dict[str, Any]]:
    """Return the HTTP status and body of an explanation of one customer's tags.

    Only the worker that owns the customer's partition holds its state; any
    other answers 409 with the owner's web address, for `tagger explain`.
    """
    processor = runtime.processor
    key = customer.encode()
    partition = partition_for(key, runtime.settings.partitions)
    partition_state = processor.assigned.get(partition)
    if partition_state is None or not partition_state.index_ready:
        try:
            owner = str(runtime.app.router.key_store("customers", key))
        except Exception:
            owner = None
        return 409, {
            "error": f"this worker does not own partition {partition} of customer {customer!r}",
            "owner": owner,
        }
    raw = processor.customers.get(key)
    if raw is None:
        return 404, {"error": f"customer {customer!r} not found"}
    state = decode_state(raw)
    try:
        explanations = explain(
            runtime.rulebook, state, clock=partition_state.clock, tag=tag or None
        )
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 200, {
        "customer_id": customer,
        "clock": partition_state.clock,
        "rulebook_version": runtime.rulebook.version,
        "explanations": [explanation_to_json(item) for item in explanations],
        "text": render_text(explanations),
    }


def readiness(runtime: TaggerRuntime) -> tuple[bool, list[str]]:
    """Return whether every assigned partition has recovered and caught up, and why not."""
    reasons: list[str] = []
    processor = runtime.processor
    gate = runtime.gate
    if gate is not None and gate.reason is not None:
        reasons.append(gate.reason)
    if not processor.assigned:
        reasons.append("no partition assigned yet")
    for partition, state in sorted(processor.assigned.items()):
        if not state.index_ready:
            reasons.append(f"partition {partition} is recovering")
        elif not runtime.caught_up(partition):
            reasons.append(f"partition {partition} is behind its input")
    return not reasons, reasons


def status(runtime: TaggerRuntime) -> dict[str, Any]:
    """Return the worker's progress per partition, for the demo, tests and operators."""
    processor = runtime.processor
    lateness = runtime.rulebook.allowed_lateness_ms
    partitions = {}
    for partition, state in sorted(processor.assigned.items()):
        lags = {f"{tp.topic}": runtime.lag(tp) for tp in runtime.input_partitions(partition)}
        partitions[str(partition)] = {
            "clock": state.clock,
            "watermark": state.clock - lateness,
            "index_ready": state.index_ready,
            "caught_up": runtime.caught_up(partition),
            "lag": lags,
            "due_customers": len(state.due),
            "next_due": state.due.next_due(),
        }
    ready, reasons = readiness(runtime)
    mirror = runtime.mirror
    return {
        "ready": ready,
        "reasons": reasons,
        "clock_mode": runtime.settings.clock_mode,
        "rulebook_version": runtime.rulebook.version,
        "active_rulebook_version": (
            None
            if runtime.gate is None or runtime.gate.active is None
            else runtime.gate.active.version
        ),
        "partitions": partitions,
        "mirror": {
            "pending": 0 if mirror is None else mirror.pending_count,
            "healthy": True if mirror is None else mirror.healthy,
        },
    }
