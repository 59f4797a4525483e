"""`tagger mirror verify` and `rebuild`: compare the Redis mirror with the table, and repair it.

The customers table, read from its changelog topic, is the truth. Verify
reads it to the end, reads every customer hash, tag set and seq key under
the prefix, and lists each difference. Rebuild repairs them with the
worker's own Lua script.

Both are safe while workers run. A worker writes a customer's state to the
changelog, and waits for the broker's ack, before it writes the customer to
Redis, so Redis never holds a seq the changelog lacks. A customer changed
between the two reads looks different, so every customer with a
difference is checked again after the changelog is read once more. Rebuild
then writes each customer only if its seq key still holds the value read
(WATCH, MULTI/EXEC), and removes a tag-set member only if the customer hash
still lacks that tag (one Lua call). A worker write in between wins, and it
comes from a state the changelog already has, so the mirror converges.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar, cast

import redis
import redis.exceptions

from tagger.errors import MirrorError
from tagger.rules.rulebook import Rulebook, load_rulebook, parse_rulebook
from tagger.streams.config import Settings
from tagger.streams.customers_changelog import ChangelogReader, Progress, TableCustomer
from tagger.streams.mirror import _rulebook_fields as rulebook_fields
from tagger.streams.mirror import read_rulebook, write_rulebook
from tagger.streams.mirror_lua import (
    APPLY_SCRIPT,
    APPLY_SCRIPT_SHA,
    apply_arguments,
    customer_key,
    rulebook_key,
    seq_key,
    tag_key,
)
from tagger.streams.rulebook_versions import read_active
from tagger.streams.security import redis_args

__all__ = [
    "Difference",
    "DifferenceKind",
    "MirrorView",
    "RebuildReport",
    "VerifyReport",
    "compare",
    "read_mirror",
    "rebuild",
    "verify",
]

DifferenceKind = Literal[
    "missing_tag",
    "extra_tag",
    "wrong_since",
    "missing_member",
    "wrong_member_since",
    "stray_member",
    "seq_ahead",
    "rulebook_missing",
    "rulebook_outdated",
]

# Keys per pipeline: replies stay small and well within the socket timeout.
_PIPELINE = 500
_SCAN_COUNT = 1_000
# Before the second look at customers that differ, in-flight worker writes
# get this long (seconds) to reach Redis. They lag the changelog by
# milliseconds when Redis is healthy.
_RECHECK_DELAY_S = 1.0
_REDIS_TIMEOUT_S = 10.0
_T = TypeVar("_T")

# KEYS[1] customer hash, KEYS[2] tag set; ARGV[1] tag, ARGV[2] customer id.
# Removes the member only while the hash lacks the tag, so a worker that
# added the tag meanwhile (hash and set in one script) keeps it.
_REMOVE_STRAY_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
return redis.call('ZREM', KEYS[2], ARGV[2])
"""


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the mirror differs from the table; `expected` is the table's value."""

    kind: DifferenceKind
    customer_id: str | None
    tag: str | None = None
    expected: int | str | None = None
    found: int | str | None = None

    def describe(self) -> str:
        """Return the difference as one line for people."""
        where = f"customer {self.customer_id!r}" if self.customer_id is not None else "rulebook"
        tag = f" tag {self.tag!r}" if self.tag is not None else ""
        expected, found = _show(self.expected), _show(self.found)
        return f"{self.kind}: {where}{tag}: expected {expected}, found {found}"


@dataclass(slots=True)
class MirrorView:
    """Contents of the mirror: customer -> tag -> since from hashes and from tag sets, and seqs."""

    hashes: dict[str, dict[str, int]] = field(default_factory=dict)
    members: dict[str, dict[str, int]] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class VerifyReport:
    """The outcome of `verify`."""

    changelog_records: int
    customers: int
    rulebook_version: str
    rulebook_source: str
    differences: list[Difference]

    def counts(self) -> dict[str, int]:
        """Differences by kind."""
        return dict(sorted(Counter(d.kind for d in self.differences).items()))

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data, every difference included."""
        return {
            "changelog_records": self.changelog_records,
            "customers": self.customers,
            "rulebook_version": self.rulebook_version,
            "rulebook_source": self.rulebook_source,
            "counts": self.counts(),
            "differences": [asdict(d) for d in self.differences],
        }


@dataclass(slots=True)
class RebuildReport:
    """The outcome of `rebuild`: what it found and what it wrote."""

    found: VerifyReport
    customers_rewritten: int = 0
    members_removed: int = 0
    rulebook_written: bool = False
    # Customers a worker wrote between the check and the repair; the worker's
    # write is newer than what rebuild read, so they were left alone.
    customers_skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "found": self.found.to_json(),
            "customers_rewritten": self.customers_rewritten,
            "members_removed": self.members_removed,
            "rulebook_written": self.rulebook_written,
            "customers_skipped": self.customers_skipped,
        }


def verify(settings: Settings, *, progress: Progress | None = None) -> VerifyReport:
    """Compare the mirror under `settings.redis_prefix` with the customers table."""
    client = _client(settings)
    try:
        with _redis_errors(settings), ChangelogReader(settings) as reader:
            report, _view = _inspect(settings, client, reader, progress)
        return report
    finally:
        client.close()


def rebuild(settings: Settings, *, progress: Progress | None = None) -> RebuildReport:
    """Repair every difference `verify` finds, and re-write the rulebook hash if it differs.

    A customer whose seq in Redis is above the table's is written anyway,
    with the table's seq: the table is the truth, and until then the
    worker's writes for that customer would be ignored as stale.
    """
    client = _client(settings)
    try:
        with _redis_errors(settings), ChangelogReader(settings) as reader:
            found, view = _inspect(settings, client, reader, progress)
            report = RebuildReport(found)
            if not found.differences:
                return report
            client.script_load(APPLY_SCRIPT)
            by_customer: dict[str, list[Difference]] = {}
            for difference in found.differences:
                if difference.customer_id is not None:
                    by_customer.setdefault(difference.customer_id, []).append(difference)
            for customer_id, differences in by_customer.items():
                if any(d.kind != "stray_member" for d in differences):
                    expected = reader.customers.get(customer_id, TableCustomer(0, {}))
                    observed = view.seqs.get(customer_id)
                    if _rewrite(client, settings.redis_prefix, customer_id, expected, observed):
                        report.customers_rewritten += 1
                    else:
                        report.customers_skipped.append(customer_id)
            strays = [d for d in found.differences if d.kind == "stray_member"]
            report.members_removed = _remove_strays(client, settings.redis_prefix, strays)
            if any(d.customer_id is None for d in found.differences):
                rulebook, _source = _expected_rulebook(settings)
                write_rulebook(client, settings.redis_prefix, rulebook.describe(), rulebook.version)
                report.rulebook_written = True
        return report
    finally:
        client.close()


def _inspect(
    settings: Settings,
    client: redis.Redis,
    reader: ChangelogReader,
    progress: Progress | None,
) -> tuple[VerifyReport, MirrorView]:
    """Read both sides, compare, and look again at customers that differ."""
    rulebook, source = _expected_rulebook(settings)
    prefix = settings.redis_prefix
    reader.read_to_end(progress)
    view = read_mirror(client, prefix)
    differences = compare(reader.customers, view)

    suspects = {d.customer_id for d in differences if d.customer_id is not None}
    if suspects:
        time.sleep(_RECHECK_DELAY_S)
        reader.read_to_end(progress)
        tags_to_check = {
            customer_id: set(reader.customers.get(customer_id, TableCustomer(0, {})).tags)
            | set(view.hashes.get(customer_id, {}))
            | set(view.members.get(customer_id, {}))
            for customer_id in suspects
        }
        again = _read_customers(client, prefix, tags_to_check)
        for customer_id in suspects:
            _replace(view, again, customer_id)
        differences = compare(reader.customers, view, customers=suspects)

    differences.extend(_compare_rulebook(client, prefix, rulebook))
    report = VerifyReport(
        changelog_records=reader.records,
        customers=len(reader.customers),
        rulebook_version=rulebook.version,
        rulebook_source=source,
        differences=differences,
    )
    return report, view


def compare(
    table: Mapping[str, TableCustomer],
    view: MirrorView,
    *,
    customers: Iterable[str] | None = None,
) -> list[Difference]:
    """List how `view` differs from `table`, for the customers on either side or `customers`."""
    if customers is None:
        ids = set(table) | set(view.hashes) | set(view.members) | set(view.seqs)
    else:
        ids = set(customers)
    differences: list[Difference] = []
    for customer_id in sorted(ids):
        expected = table.get(customer_id, TableCustomer(0, {}))
        held = view.hashes.get(customer_id, {})
        member_of = view.members.get(customer_id, {})
        for tag, since in sorted(expected.tags.items()):
            if tag not in held:
                differences.append(Difference("missing_tag", customer_id, tag, since, None))
            elif held[tag] != since:
                differences.append(Difference("wrong_since", customer_id, tag, since, held[tag]))
            if tag not in member_of:
                differences.append(Difference("missing_member", customer_id, tag, since, None))
            elif member_of[tag] != since:
                differences.append(
                    Difference("wrong_member_since", customer_id, tag, since, member_of[tag])
                )
        for tag in sorted(set(held) - set(expected.tags)):
            differences.append(Difference("extra_tag", customer_id, tag, None, held[tag]))
        for tag in sorted(set(member_of) - set(expected.tags) - set(held)):
            differences.append(Difference("stray_member", customer_id, tag, None, member_of[tag]))
        # A seq key alone, of a customer the table no longer has, only guards
        # against stale retries until it expires.
        seq_only = customer_id not in table and not held and not member_of
        stored_seq = view.seqs.get(customer_id)
        if stored_seq is not None and stored_seq > expected.seq and not seq_only:
            differences.append(Difference("seq_ahead", customer_id, None, expected.seq, stored_seq))
    return differences


def read_mirror(client: redis.Redis, prefix: str) -> MirrorView:
    """Read every customer hash, tag set and seq key under `prefix` (SCAN, never KEYS)."""
    view = MirrorView()
    customer_prefix = customer_key(prefix, "")
    keys = list(client.scan_iter(match=_glob_escape(customer_prefix) + "*", count=_SCAN_COUNT))
    for chunk in _chunks(keys, _PIPELINE):
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hgetall(key)
            for key, raw in zip(chunk, pipe.execute(), strict=True):
                if raw:
                    view.hashes[key[len(customer_prefix) :]] = {
                        tag: int(since) for tag, since in raw.items()
                    }

    tag_prefix = tag_key(prefix, "")
    for key in client.scan_iter(match=_glob_escape(tag_prefix) + "*", count=_SCAN_COUNT):
        tag = key[len(tag_prefix) :]
        for member, score in client.zscan_iter(key, count=_SCAN_COUNT):
            view.members.setdefault(member, {})[tag] = int(score)

    seq_prefix = seq_key(prefix, "")
    keys = list(client.scan_iter(match=_glob_escape(seq_prefix) + "*", count=_SCAN_COUNT))
    for chunk in _chunks(keys, _PIPELINE):
        for key, value in zip(chunk, cast(list[Any], client.mget(chunk)), strict=True):
            if value is not None:
                view.seqs[key[len(seq_prefix) :]] = int(value)
    return view


def _read_customers(
    client: redis.Redis, prefix: str, tags_to_check: Mapping[str, set[str]]
) -> MirrorView:
    """Read the hash, seq and the given tag-set scores of a few customers."""
    view = MirrorView()
    for chunk in _chunks(sorted(tags_to_check), _PIPELINE):
        with client.pipeline(transaction=False) as pipe:
            for customer_id in chunk:
                pipe.hgetall(customer_key(prefix, customer_id))
                pipe.get(seq_key(prefix, customer_id))
                for tag in sorted(tags_to_check[customer_id]):
                    pipe.zscore(tag_key(prefix, tag), customer_id)
            replies = iter(pipe.execute())
        for customer_id in chunk:
            raw = next(replies)
            if raw:
                view.hashes[customer_id] = {tag: int(since) for tag, since in raw.items()}
            seq = next(replies)
            if seq is not None:
                view.seqs[customer_id] = int(seq)
            for tag in sorted(tags_to_check[customer_id]):
                score = next(replies)
                if score is not None:
                    view.members.setdefault(customer_id, {})[tag] = int(score)
    return view


def _replace(view: MirrorView, again: MirrorView, customer_id: str) -> None:
    for mapping, newer in (
        (view.hashes, again.hashes),
        (view.members, again.members),
    ):
        mapping.pop(customer_id, None)
        if customer_id in newer:
            mapping[customer_id] = newer[customer_id]
    view.seqs.pop(customer_id, None)
    if customer_id in again.seqs:
        view.seqs[customer_id] = again.seqs[customer_id]


def _compare_rulebook(client: redis.Redis, prefix: str, rulebook: Rulebook) -> list[Difference]:
    # Compared field by field with what a worker writes, so verify agrees
    # with the writer whatever the encoding of each field.
    found = cast(dict[str, str], client.hgetall(rulebook_key(prefix)))
    if not found:
        return [Difference("rulebook_missing", None, None, rulebook.version, None)]
    expected = {
        str(name): str(value)
        for name, value in rulebook_fields(rulebook.describe(), rulebook.version).items()
    }
    if found != expected:
        found_version = read_rulebook(client, prefix)["version"]
        return [Difference("rulebook_outdated", None, None, rulebook.version, found_version)]
    return []


def _expected_rulebook(settings: Settings) -> tuple[Rulebook, str]:
    """Return the rulebook the group runs: the active one recorded in Kafka, else the file."""
    active = read_active(settings)
    if active is not None and active.rulebook_text:
        source = active.source or "the active rulebook"
        return parse_rulebook(active.rulebook_text, file=source), f"active in Kafka ({source})"
    path = settings.rulebook_path
    return load_rulebook(path), path if path else "the packaged default rulebook"


def _rewrite(
    client: redis.Redis,
    prefix: str,
    customer_id: str,
    expected: TableCustomer,
    observed_seq: int | None,
) -> bool:
    """Write the customer's table tags and seq unless its seq key changed since it was read.

    Deleting the seq key first makes the script apply even a seq that is
    not above the stored one.
    """
    key = seq_key(prefix, customer_id)
    keys, args = apply_arguments(prefix, customer_id, expected.seq, expected.tags)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            current = pipe.get(key)
            if (None if current is None else int(cast(Any, current))) != observed_seq:
                return False
            pipe.multi()
            pipe.delete(key)
            pipe.evalsha(APPLY_SCRIPT_SHA, len(keys), *keys, *args)
            pipe.execute()
        except redis.exceptions.WatchError:
            return False
    return True


def _remove_strays(client: redis.Redis, prefix: str, strays: list[Difference]) -> int:
    removed = 0
    for chunk in _chunks(strays, _PIPELINE):
        with client.pipeline(transaction=False) as pipe:
            for stray in chunk:
                customer_id, tag = stray.customer_id or "", stray.tag or ""
                pipe.eval(
                    _REMOVE_STRAY_SCRIPT,
                    2,
                    customer_key(prefix, customer_id),
                    tag_key(prefix, tag),
                    tag,
                    customer_id,
                )
            removed += sum(int(reply) for reply in pipe.execute())
    return removed


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=_REDIS_TIMEOUT_S,
        socket_connect_timeout=_REDIS_TIMEOUT_S,
        **redis_args(settings),
    )


@contextmanager
def _redis_errors(settings: Settings) -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        url = settings.redacted()["redis_url"]
        raise MirrorError(f"Redis at {url} failed: {exc!r}; check REDIS_URL") from exc


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _glob_escape(text: str) -> str:
    """Escape the glob characters of SCAN MATCH, so a prefix matches only itself."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def _show(value: int | str | None) -> str:
    return "-" if value is None else str(value)
