"""Leave the consumer group when a worker stops, so its partitions move at once.

faust-streaming 0.15 stops its consumer thread without the Kafka client
sending LeaveGroup. The group then waits a whole session timeout before it
gives the stopped worker's partitions to the others. Measured here with a
30 s session timeout on the embedded broker: 46 s without LeaveGroup, 19 s
with it. The worker calls `leave_group` after Faust has drained the streams
and committed. It closes the client's group coordinator inside the client's
thread, which sends LeaveGroup.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka.protocol.group import LeaveGroupRequest

__all__ = ["leave_group"]

log = structlog.get_logger(__name__)


async def leave_group(app: Any, *, timeout_s: float) -> bool:
    """Close the app's consumer group coordinator in its thread; return True once it has left.

    Reads private attributes: the consumer thread and client of
    faust-streaming 0.15's aiokafka driver, and the client's coordinator.
    Where they are missing, it logs and returns False, so the group falls
    back to the session timeout.
    """
    thread = getattr(getattr(app, "_consumer", None), "_thread", None)
    client = getattr(thread, "_consumer", None)
    loop = getattr(thread, "thread_loop", None)
    if client is None or loop is None or loop.is_closed():
        log.warning(
            "consumer client not found, the group will wait for the session timeout",
            group=getattr(getattr(app, "conf", None), "id", None),
        )
        return False
    coordinator = getattr(client, "_coordinator", None)
    if coordinator is None:
        log.warning(
            "consumer group coordinator not found, the group will wait for the session timeout",
            group=app.conf.id,
        )
        return False
    started = time.monotonic()
    # Closing the coordinator stops its heartbeat and sends LeaveGroup; the
    # client's own stop, which Faust calls later, then finds it closed.
    future = asyncio.run_coroutine_threadsafe(_close_and_leave(coordinator), loop)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout=timeout_s)
    except Exception as exc:
        future.cancel()
        log.warning(
            "leaving the consumer group failed, the group will wait for the session timeout",
            group=app.conf.id,
            error=repr(exc),
            timeout_s=timeout_s,
        )
        return False
    log.info(
        "left the consumer group",
        group=app.conf.id,
        seconds=round(time.monotonic() - started, 3),
    )
    return True


async def _close_and_leave(coordinator: Any) -> None:
    # aiokafka sends LeaveGroup only for a generation above 0, but the
    # embedded broker (Tansu) numbers a group's first generation 0, so the
    # request is sent here for such a member.
    generation = coordinator.generation
    member_id = coordinator.member_id
    await coordinator.close()
    if generation == 0 and member_id:
        await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, member_id))
