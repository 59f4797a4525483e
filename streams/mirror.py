"""The Redis mirror: background per-customer writes, the rulebook hash and read helpers.

Keys (prefix from the settings, default `tagger:`; see `mirror_lua` for the script):

- `<prefix>customer:<id>`: hash, tag -> since (epoch ms)
- `<prefix>tag:<tag>`: sorted set of customer ids scored by since
- `<prefix>seq:<id>`: `mirror_seq` (epoch and change sequence) last applied for the customer
- `<prefix>rulebook`: hash, tag or rule id -> JSON labels, plus `__version__`
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

import redis
import redis.asyncio
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT, FieldT

from tagger.streams.config import Settings
from tagger.streams.mirror_lua import (
    APPLY_SCRIPT,
    APPLY_SCRIPT_SHA,
    ERASE_SCRIPT,
    ERASE_SCRIPT_SHA,
    apply_arguments,
    customer_key,
    erase_arguments,
    rulebook_key,
    tag_key,
)
from tagger.streams.security import redis_args

__all__ = [
    "MAX_PIPELINE",
    "RULEBOOK_VERSION_FIELD",
    "MirrorWriter",
    "MirroredRulebook",
    "Outcome",
    "count_members",
    "read_members",
    "read_rulebook",
    "read_tags",
    "write_rulebook",
]

# Script calls per round trip: enough to amortise the network round trip,
# few enough that one pipeline's replies arrive well within the socket timeout.
MAX_PIPELINE = 500
# Retry delays after a failed write double from the first to the last value.
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
RULEBOOK_VERSION_FIELD = "__version__"
# Replies that reflect the server's state rather than the write itself, so
# the same write can succeed later (out of memory, read-only replica, still
# loading, cluster resharding).
_TRANSIENT_REPLY_ERRORS = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
)
# Failures of a whole round trip: every write in it is retried.
_ROUND_TRIP_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)

Outcome = Literal["ok", "stale", "failed", "retry"]

log = structlog.get_logger(__name__)


class MirroredRulebook(TypedDict):
    """The `<prefix>rulebook` hash, decoded."""

    version: str | None
    tags: dict[str, dict[str, str]]


@dataclass(frozen=True, slots=True, eq=False)
class _Update:
    customer_id: str
    seq: int
    tags: dict[str, int]
    # True for an erasure: `seq` is the fence and `tags` the tags to unset.
    erase: bool = False


class MirrorWriter:
    """Writes customers' current tags to Redis in the background, never blocking the caller.

    `submit` queues a customer's full tag set with its `mirror_seq`, and
    `erase` queues the deletion of an erased customer's keys; only the
    newest per customer is kept, so an erasure replaces the queued writes
    of the epochs it ends. A task started by
    `start` sends queued customers in pipelines of script calls. When Redis
    fails or times out the customers stay queued and are retried with
    exponential backoff; one warning is logged when writes start failing and
    one info line when they recover.

    `on_confirmed(customer_id, seq)` runs for every customer Redis confirmed
    (written, or already at that sequence or newer). `on_outcome(outcome, n)`
    counts customers by outcome: `ok` written, `stale` Redis already held a
    newer sequence, `retry` queued again after an error, `failed` dropped
    because Redis rejected the write or `stop` gave up on it.

    All methods must be called from the event loop that runs `start`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_confirmed: Callable[[str, int], None] | None = None,
        on_outcome: Callable[[Outcome, int], None] | None = None,
        client: redis.asyncio.Redis | None = None,
        max_pipeline: int = MAX_PIPELINE,
    ) -> None:
        self.prefix = settings.redis_prefix
        self._client = client if client is not None else _connect(settings)
        self._owns_client = client is None
        self._on_confirmed = on_confirmed
        self._on_outcome = on_outcome
        self._max_pipeline = max_pipeline
        self._pending: dict[str, _Update] = {}
        self._in_flight: dict[str, _Update] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_error: BaseException | None = None
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._retry_delay_s = RETRY_INITIAL_S

    @property
    def pending_count(self) -> int:
        """Customers queued or being written, not yet confirmed by Redis."""
        in_flight_only = sum(1 for key in self._in_flight if key not in self._pending)
        return len(self._pending) + in_flight_only

    @property
    def last_error(self) -> BaseException | None:
        """The error of the last failed write, or None once a write succeeds again."""
        return self._last_error

    @property
    def healthy(self) -> bool:
        """False from the first failed write until the next successful one."""
        return self._failing_since is None

    def submit(self, customer_id: str, seq: int, tags: Mapping[str, int]) -> None:
        """Queue the customer's full current tag set (tag -> since, epoch ms) at `seq`.

        Returns at once and never raises. `seq` is a `mirror_seq`: it must
        grow with every change of the customer, across erasures too, because
        Redis ignores a sequence that is not above the one it holds.
        """
        try:
            update = _Update(customer_id, int(seq), {str(t): int(s) for t, s in tags.items()})
            self._queue(update)
        except Exception:
            log.exception("mirror submit failed", customer_id=customer_id, seq=seq)
            self._emit_outcome("failed", 1)

    def erase(self, customer_id: str, fence: int, tags: Iterable[str]) -> None:
        """Queue the deletion of an erased customer's hash and tag-set memberships.

        `fence` is `mirror_seq(new epoch, 0)`: Redis keeps it in the seq key,
        so a write of an erased epoch that arrives later changes nothing.
        `tags` are the tags the customer held, whose sets are cleaned too.
        Returns at once and never raises.
        """
        try:
            update = _Update(customer_id, int(fence), dict.fromkeys(map(str, tags), 0), erase=True)
            self._queue(update)
        except Exception:
            log.exception("mirror erase failed", customer_id=customer_id, fence=fence)
            self._emit_outcome("failed", 1)

    def _queue(self, update: _Update) -> None:
        queued = self._pending.get(update.customer_id)
        if queued is not None and queued.seq >= update.seq:
            return
        self._pending[update.customer_id] = update
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        """Start the background task on the running event loop."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="tagger-mirror-writer"
        )

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a cancel scope
        """Wait until every queued customer is confirmed; False when `timeout` (s) ran out."""
        if self.pending_count == 0:
            return True
        if self._task is None or self._task.done():
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Flush for up to `flush_timeout` seconds, then stop the task and close the client.

        Customers still queued then are counted as `failed` and logged; the
        worker's state shows them behind, so they are retried on the next start.
        """
        task = self._task
        if task is not None:
            self._stopping = True
            self._wake.set()
            flushed = await self.flush(flush_timeout)
            left = self.pending_count
            self._task = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

            if not flushed and left:
                log.warning(
                    "mirror stopped with customers not written",
                    pending=left,
                    error=repr(self._last_error),
                )
                self._emit_outcome("failed", left)
                self._pending.clear()
                self._in_flight.clear()

        if self._owns_client:
            await self._client.aclose()

    async def write_rulebook(
        self, description: Mapping[str, Mapping[str, str]], version: str
    ) -> None:
        """Replace the `<prefix>rulebook` hash in one MULTI/EXEC (see `write_rulebook`)."""
        fields = _rulebook_fields(description, version)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(rulebook_key(self.prefix))
            pipe.hset(rulebook_key(self.prefix), mapping=fields)
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue

            batch = self._take_batch()
            try:
                retry, error = await self._write(batch)
            except _ROUND_TRIP_ERRORS as exc:
                retry, error = batch, exc
            except Exception as exc:
                # A bug in a callback or here must not end the writer.
                log.exception("mirror write failed unexpectedly", customers=len(batch))
                retry, error = batch, exc
            finally:
                self._in_flight.clear()

            if error is None:
                self._record_success()
                continue
            self._requeue(retry)
            self._record_failure(error, len(retry))
            await asyncio.sleep(self._next_delay())

    def _take_batch(self) -> list[_Update]:
        batch: list[_Update] = []
        for customer_id in list(itertools.islice(self._pending, self._max_pipeline)):
            update = self._pending.pop(customer_id)
            self._in_flight[customer_id] = update
            batch.append(update)
        return batch

    async def _write(self, batch: list[_Update]) -> tuple[list[_Update], BaseException | None]:
        """Send one pipeline; return the updates to retry and the first retryable error."""
        replies = await self._evalsha_all(batch)
        missing_script = [u for u, r in zip(batch, replies, strict=True) if _is_noscript(r)]
        if missing_script:
            # The server restarted or flushed its script cache: load once, send again.
            await self._client.script_load(APPLY_SCRIPT)
            await self._client.script_load(ERASE_SCRIPT)
            again = dict(zip(missing_script, await self._evalsha_all(missing_script), strict=True))
            replies = [again.get(u, r) for u, r in zip(batch, replies, strict=True)]

        confirmed: list[_Update] = []
        retry: list[_Update] = []
        rejected: list[tuple[_Update, BaseException]] = []
        stale = 0
        first_error: BaseException | None = None
        for update, reply in zip(batch, replies, strict=True):
            if isinstance(reply, _TRANSIENT_REPLY_ERRORS):
                retry.append(update)
                first_error = first_error or reply
            elif isinstance(reply, BaseException):
                rejected.append((update, reply))
            else:
                confirmed.append(update)
                stale += int(reply) == 0

        self._emit_outcome("ok", len(confirmed) - stale)
        self._emit_outcome("stale", stale)
        if rejected:
            update, error = rejected[0]
            log.warning(
                "Redis rejected mirror writes, dropping them",
                customers=len(rejected),
                customer_id=update.customer_id,
                seq=update.seq,
                error=repr(error),
            )
            self._emit_outcome("failed", len(rejected))
        self._confirm(confirmed)
        return retry, first_error

    async def _evalsha_all(self, batch: list[_Update]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for update in batch:
                if update.erase:
                    keys, args = erase_arguments(
                        self.prefix, update.customer_id, update.seq, update.tags
                    )
                    pipe.evalsha(ERASE_SCRIPT_SHA, len(keys), *keys, *args)
                    continue
                keys, args = apply_arguments(
                    self.prefix, update.customer_id, update.seq, update.tags
                )
                pipe.evalsha(APPLY_SCRIPT_SHA, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    def _confirm(self, confirmed: list[_Update]) -> None:
        if self._on_confirmed is None:
            return
        for update in confirmed:
            # An erased customer has no state left to record the confirmation in.
            if update.erase:
                continue
            try:
                self._on_confirmed(update.customer_id, update.seq)
            except Exception:
                log.exception("mirror on_confirmed callback failed", customer_id=update.customer_id)

    def _requeue(self, updates: list[_Update]) -> None:
        """Put failed updates back at the front, unless a newer one was submitted meanwhile."""
        restored = {
            u.customer_id: u
            for u in updates
            if u.customer_id not in self._pending or self._pending[u.customer_id].seq < u.seq
        }
        for customer_id, update in self._pending.items():
            restored.setdefault(customer_id, update)
        self._pending = restored
        self._emit_outcome("retry", len(updates))

    def _record_failure(self, error: BaseException, customers: int) -> None:
        self._last_error = error
        self._failed_attempts += 1
        if self._failing_since is not None:
            return
        self._failing_since = time.monotonic()
        log.warning(
            "mirror writes failing, retrying with backoff",
            error=repr(error),
            customers=customers,
            pending=self.pending_count,
        )

    def _record_success(self) -> None:
        self._retry_delay_s = RETRY_INITIAL_S
        self._last_error = None
        if self._failing_since is None:
            return
        log.info(
            "mirror writes recovered",
            failed_attempts=self._failed_attempts,
            outage_s=round(time.monotonic() - self._failing_since, 3),
            pending=self.pending_count,
        )
        self._failing_since = None
        self._failed_attempts = 0

    def _next_delay(self) -> float:
        # Random jitter keeps workers that lost Redis together from retrying in step.
        delay = self._retry_delay_s * random.uniform(0.5, 1.0)
        self._retry_delay_s = min(self._retry_delay_s * 2, RETRY_MAX_S)
        return delay

    def _emit_outcome(self, outcome: Outcome, count: int) -> None:
        if self._on_outcome is None or count <= 0:
            return
        try:
            self._on_outcome(outcome, count)
        except Exception:
            log.exception("mirror on_outcome callback failed", outcome=outcome)


def _connect(settings: Settings) -> redis.asyncio.Redis:
    # The writer retries on its own schedule, so the client must not retry
    # each command again inside one attempt.
    return redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.mirror_timeout_s,
        socket_connect_timeout=settings.mirror_timeout_s,
        retry=Retry(NoBackoff(), 0),
        **redis_args(settings),
    )


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def write_rulebook(
    client: redis.Redis,
    prefix: str,
    description: Mapping[str, Mapping[str, str]],
    version: str,
) -> None:
    """Replace the `<prefix>rulebook` hash in one MULTI/EXEC.

    `description` maps each tag to its `group`, `zh` and `en` labels, and
    each entry becomes a field holding that JSON. A parameterised tag is
    described by its rule id, with `{param}` in its label templates. The
    field `__version__` holds `version`.
    """
    fields = _rulebook_fields(description, version)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(rulebook_key(prefix))
        pipe.hset(rulebook_key(prefix), mapping=fields)
        pipe.execute()


def _rulebook_fields(
    description: Mapping[str, Mapping[str, str]], version: str
) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {RULEBOOK_VERSION_FIELD: version}
    for tag, labels in description.items():
        # Rulebook.describe() carries its own version entry; the field above
        # holds the version as a plain string.
        if tag == RULEBOOK_VERSION_FIELD:
            continue
        value = {key: labels.get(key, "") for key in ("group", "zh", "en")}
        fields[tag] = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return fields


def read_tags(client: redis.Redis, prefix: str, customer_id: str) -> dict[str, int]:
    """Return the customer's current tags: tag -> since (epoch ms)."""
    raw = cast(dict[Any, Any], client.hgetall(customer_key(prefix, customer_id)))
    return {_text(tag): int(since) for tag, since in raw.items()}


def read_members(
    client: redis.Redis, prefix: str, tag: str, *, offset: int = 0, limit: int = 50
) -> list[tuple[str, int]]:
    """Return one page of the customers holding `tag`, newest since first."""
    if limit <= 0:
        return []
    raw = cast(
        list[tuple[Any, float]],
        client.zrevrange(tag_key(prefix, tag), offset, offset + limit - 1, withscores=True),
    )
    return [(_text(member), int(score)) for member, score in raw]


def count_members(client: redis.Redis, prefix: str, tag: str) -> int:
    """Return how many customers hold `tag`."""
    return int(client.zcard(tag_key(prefix, tag)))


def read_rulebook(client: redis.Redis, prefix: str) -> MirroredRulebook:
    """Return the rulebook version and each tag's `group`, `zh` and `en` labels."""
    raw = cast(dict[Any, Any], client.hgetall(rulebook_key(prefix)))
    version: str | None = None
    tags: dict[str, dict[str, str]] = {}
    for field, value in raw.items():
        name = _text(field)
        if name == RULEBOOK_VERSION_FIELD:
            version = _text(value)
            continue
        decoded = json.loads(_text(value))
        tags[name] = {key: str(decoded.get(key, "")) for key in ("group", "zh", "en")}
    return MirroredRulebook(version=version, tags=tags)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
