"""The rule engine: applies events and clock ticks to a customer's state and decides tag changes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Final

from tagger.rules.aggregates import Plan, fold_event, make_plan, prune
from tagger.rules.evaluate import Context, collect_timers, evaluate, next_change, reason_values
from tagger.rules.expression import Metric, Node, walk
from tagger.rules.rulebook import MANUAL_GROUP, MANUAL_PREFIX, PARAM_RE, Rule, Rulebook
from tagger.rules.state import CustomerState, Scope, ScopeCache
from tagger.schemas.events import Event
from tagger.schemas.tag_change import Action, ChangeSource, TagChange

__all__ = [
    "DEDUP_MAX_AGE_MS",
    "DEDUP_MAX_EVENTS",
    "MAX_MANUAL_TAGS",
    "Engine",
    "Outcome",
    "Position",
]

# The dedup memory contains the last DEDUP_MAX_EVENTS event ids applied, and
# none recorded more than DEDUP_MAX_AGE_MS of wall time ago, whichever leaves
# fewer. That catches a producer's retry and keeps the memory near 1 KB.
DEDUP_MAX_EVENTS: Final = 64
DEDUP_MAX_AGE_MS: Final = 10 * 60 * 1000
MAX_MANUAL_TAGS: Final = 64


@dataclass(frozen=True)
class Position:
    """The topic, partition and offset an input record was read from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Outcome:
    """The result of applying one event.

    `changes` are the tag changes to publish, in order. `duplicate` is True
    when the event was applied before, by position or by event id. `late` is
    True when an applied event's time is before the watermark.
    """

    changes: tuple[TagChange, ...]
    duplicate: bool
    late: bool


class Engine:
    """Decides one rulebook's tag changes. It keeps no per-customer data and does no I/O."""

    def __init__(self, rulebook: Rulebook) -> None:
        self.rulebook = rulebook
        self._plan: Plan = make_plan(rulebook.rules)
        self._order = {rule.id: index for index, rule in enumerate(rulebook.rules)}
        self._rules = {rule.id: rule for rule in rulebook.rules}
        self._manual_order = len(rulebook.rules)
        # Timed parts of every rule, grouped by the kind of scope they read:
        # None for customer-wide rules, else the `per` field.
        expressions: dict[str | None, list[Node]] = {}
        for rule in rulebook.rules:
            expressions.setdefault(rule.per, []).append(rule.condition)
            if rule.rank is not None:
                expressions[rule.per].append(rule.rank)
        self._timers = {per: collect_timers(nodes) for per, nodes in expressions.items()}
        self._per_rules: dict[str, list[Rule]] = {}
        for rule in rulebook.rules:
            if rule.per is not None:
                self._per_rules.setdefault(rule.per, []).append(rule)

    def new_state(self, customer_id: str) -> CustomerState:
        """Return the state of a customer never seen before."""
        return CustomerState(customer_id=customer_id, rulebook_version=self.rulebook.version)

    def start_batch(self, state: CustomerState) -> None:
        """Start a new batch for this customer: the next change recorded empties the outbox first.

        The outbox is not emptied here, so that a redelivered event still finds
        the changes it recorded. Once a redelivered event has re-emitted them,
        they belong to the current batch again, and later changes of the batch
        are appended after them.
        """
        state.outbox_stale = True

    def apply(
        self,
        state: CustomerState,
        event: Event,
        *,
        position: Position | None,
        clock: int,
        now: int,
    ) -> Outcome:
        """Apply one event and return the tag changes it decides.

        `clock` is the partition clock after this event moved it and `now` the
        wall time (ms) stamped as `emitted_at`.
        """
        if (
            position is not None
            and state.applied.get(_position_key(position), -1) >= position.offset
        ):
            recorded = tuple(TagChange(**change) for change in state.outbox)
            state.outbox_stale = False
            return Outcome(recorded, duplicate=True, late=False)

        event_hash = _hash_event_id(event.event_id)
        _expire_recent(state, now)
        if any(recorded == event_hash for recorded, _ in state.recent):
            if position is not None:
                state.applied[_position_key(position)] = position.offset
            return Outcome((), duplicate=True, late=False)

        watermark = clock - self.rulebook.allowed_lateness_ms
        changes = self._migrate(state, now)
        changes.extend(self._fire_due(state, watermark, now))

        time = max(state.clock, clock)
        fold_event(state, event, self._plan, horizon=time, held_values=self._held_params(state))
        _forget_results(state, event)
        manual = self._manual_tags(state, event)
        at = min(max(event.ts, watermark), time)
        source: ChangeSource = "manual" if manual is not None else "rule"
        changes.extend(self._evaluate(state, time, at=at, now=now, source=source, manual=manual))

        if position is not None:
            state.applied[_position_key(position)] = position.offset
        state.recent.append((event_hash, now))
        del state.recent[:-DEDUP_MAX_EVENTS]
        return Outcome(tuple(changes), duplicate=False, late=event.ts < watermark)

    def advance(self, state: CustomerState, *, watermark: int, now: int) -> tuple[TagChange, ...]:
        """Fire every change due at or before `watermark`, each at its due time, in time order."""
        changes = self._migrate(state, now)
        changes.extend(self._fire_due(state, watermark, now))
        return tuple(changes)

    def _migrate(self, state: CustomerState, now: int) -> list[TagChange]:
        """Re-evaluate a state last evaluated under another rulebook, at its own clock."""
        if state.rulebook_version == self.rulebook.version:
            return []
        for scopes in state.per.values():
            for scope in scopes.values():
                scope.cache = None
        changes = self._evaluate(
            state, state.clock, at=state.clock, now=now, source="rulebook_change", manual=None
        )
        state.rulebook_version = self.rulebook.version
        return changes

    def _fire_due(self, state: CustomerState, watermark: int, now: int) -> list[TagChange]:
        changes: list[TagChange] = []
        while state.due is not None and state.due <= watermark:
            due = state.due
            changes.extend(self._evaluate(state, due, at=due, now=now, source="rule", manual=None))
        return changes

    def _evaluate(
        self,
        state: CustomerState,
        time: int,
        *,
        at: int,
        now: int,
        source: ChangeSource,
        manual: dict[str, int] | None,
    ) -> list[TagChange]:
        """Evaluate every rule at `time` and record the changes from the held tags.

        Also moves the state's clock to `time` and computes its next due time.
        """
        prune(state, self._plan, time)
        desired = self._desired(state, time)
        held_manual = {tag: since for tag, since in state.tags.items() if _is_manual(tag)}
        manual_after = held_manual if manual is None else manual

        removed = [
            tag
            for tag in state.tags
            if (tag not in manual_after if _is_manual(tag) else tag not in desired)
        ]
        added = [tag for tag in desired if tag not in state.tags]
        added += [tag for tag in manual_after if tag not in state.tags]
        removed.sort(key=self._tag_order)
        added.sort(key=self._tag_order)

        winners = {
            rule.group: tag
            for tag, rule in desired.items()
            if self.rulebook.groups[rule.group].exclusive
        }
        changes: list[TagChange] = []
        for tag in removed:
            reason = self._reason(state, tag, time)
            rule = self._rules.get(tag.split(":", 1)[0])
            if rule is not None and not _is_manual(tag):
                winner = winners.get(rule.group)
                if winner is not None and self.rulebook.groups[rule.group].exclusive:
                    reason["replaced_by"] = winner
            changes.append(
                self._record(state, tag, "removed", at=at, now=now, source=source, reason=reason)
            )
            del state.tags[tag]
        for tag in added:
            reason = self._reason(state, tag, time)
            changes.append(
                self._record(state, tag, "added", at=at, now=now, source=source, reason=reason)
            )
            state.tags[tag] = at

        state.clock = max(state.clock, time)
        state.due = self._next_due(state)
        return changes

    def _desired(self, state: CustomerState, time: int) -> dict[str, Rule]:
        """Return the rule tags the customer should hold at `time`, each with its rule."""
        desired: dict[str, Rule] = {}
        taken_groups: set[str] = set()
        for rule in self.rulebook.rules:
            exclusive = self.rulebook.groups[rule.group].exclusive
            if exclusive and rule.group in taken_groups:
                continue
            if rule.per is None:
                context = self._context(state, state.totals, time)
                if evaluate(rule.condition, context) is True:
                    desired[rule.id] = rule
                    taken_groups.add(rule.group)
                continue
            for value in self._matching_values(state, rule, time):
                desired[f"{rule.id}:{value}"] = rule
        return desired

    def _matching_values(self, state: CustomerState, rule: Rule, time: int) -> list[str]:
        assert rule.per is not None
        matching: list[tuple[int | Decimal, int, str]] = []
        for value, scope in state.per.get(rule.per, {}).items():
            match = self._scope_results(state, rule.per, scope, time).matches.get(rule.id)
            if match is not None:
                matching.append((match[0], match[1], value))

        # Highest rank first, ties to the value with the most recent counted event.
        matching.sort(reverse=True)
        if rule.limit is not None:
            matching = matching[: rule.limit]
        return [value for _, _, value in matching]

    def _scope_results(self, state: CustomerState, per: str, scope: Scope, time: int) -> ScopeCache:
        """Return the results of the `per` rules on one scope at `time`, computing them if stale.

        Results hold until the scope's next event or its next timed change,
        which is what makes re-evaluating a customer with many tracked values
        cheap.
        """
        cache = scope.cache
        if cache is not None and cache.time <= time and (cache.due is None or cache.due > time):
            return cache

        context = self._context(state, scope, time)
        matches: dict[str, tuple[int | Decimal, int]] = {}
        for rule in self._per_rules[per]:
            if evaluate(rule.condition, context) is not True:
                continue
            rank = evaluate(rule.rank, context) if rule.rank is not None else 0
            assert isinstance(rank, int | Decimal)
            matches[rule.id] = (rank, _latest_counted(rule, scope, time))
        scope.cache = ScopeCache(time, next_change(self._timers[per], context), matches)
        return scope.cache

    def _next_due(self, state: CustomerState) -> int | None:
        candidates: list[int | None] = []
        for per, timers in self._timers.items():
            if per is None:
                candidates.append(
                    next_change(timers, self._context(state, state.totals, state.clock))
                )
                continue
            for scope in state.per.get(per, {}).values():
                candidates.append(self._scope_results(state, per, scope, state.clock).due)
        return min((due for due in candidates if due is not None), default=None)

    def _reason(self, state: CustomerState, tag: str, time: int) -> dict[str, Any]:
        if _is_manual(tag):
            return {"rule": MANUAL_GROUP, "when": "", "values": {}}

        rule_id, _, param = tag.partition(":")
        rule = self._rules.get(rule_id)
        if rule is None:
            return {"rule": rule_id, "when": "", "values": {}}
        scope = state.totals
        if rule.per is not None:
            scope = state.per.get(rule.per, {}).get(param, Scope())
        expressions: list[Node] = [rule.condition]
        if rule.rank is not None:
            expressions.append(rule.rank)
        values = reason_values(expressions, self._context(state, scope, time))
        return {"rule": rule.id, "when": rule.when, "values": values}

    def _record(
        self,
        state: CustomerState,
        tag: str,
        action: Action,
        *,
        at: int,
        now: int,
        source: ChangeSource,
        reason: dict[str, Any],
    ) -> TagChange:
        if state.outbox_stale:
            state.outbox.clear()
            state.outbox_stale = False
        state.seq += 1
        change = TagChange(
            change_id=f"{state.customer_id}:{state.epoch}:{state.seq}",
            customer_id=state.customer_id,
            tag=tag,
            action=action,
            at=at,
            emitted_at=now,
            rulebook_version=self.rulebook.version,
            source="manual" if _is_manual(tag) else _rule_source(source),
            reason=reason,
            group=self.rulebook.group_for(tag),
            labels=self.rulebook.labels_for(tag),
        )
        state.outbox.append(asdict(change))
        return change

    def _manual_tags(self, state: CustomerState, event: Event) -> dict[str, int] | None:
        """Return the manual tags held after a tag_assign or tag_unassign; None for other events."""
        if event.type not in ("tag_assign", "tag_unassign") or event.tag is None:
            return None
        name = event.tag.removeprefix(MANUAL_PREFIX)
        held = {tag: since for tag, since in state.tags.items() if _is_manual(tag)}
        if not PARAM_RE.fullmatch(name):
            return held

        tag = MANUAL_PREFIX + name
        if event.type == "tag_unassign":
            held.pop(tag, None)
        elif tag not in held and len(held) < MAX_MANUAL_TAGS:
            # TODO: an assign past MAX_MANUAL_TAGS is ignored with no signal to
            # the caller; manual tags also apply in arrival order, not event time.
            held[tag] = event.ts
        return held

    def _held_params(self, state: CustomerState) -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}
        for tag in state.tags:
            rule_id, _, param = tag.partition(":")
            rule = self._rules.get(rule_id)
            if param and rule is not None and rule.per is not None:
                held.setdefault(rule.per, set()).add(param)
        return held

    def _context(self, state: CustomerState, scope: Scope, time: int) -> Context:
        return Context(state, scope, time, self.rulebook.currency, self.rulebook.currency_exponent)

    def _tag_order(self, tag: str) -> tuple[int, str]:
        if _is_manual(tag):
            return (self._manual_order, tag)
        return (self._order.get(tag.split(":", 1)[0], -1), tag)


def _latest_counted(rule: Rule, scope: Scope, time: int) -> int:
    """Return the time of the newest event, at or before `time`, of a series the rule ranks by."""
    latest = -1
    roots: Iterable[Node] = [rule.rank] if rule.rank is not None else [rule.condition]
    for root in roots:
        for node in walk(root):
            if isinstance(node, Metric) and node.window is not None:
                for entry_time, _ in reversed(scope.series.get(node.key, [])):
                    if entry_time <= time:
                        latest = max(latest, entry_time)
                        break
    if latest < 0 and scope.newest is not None:
        return scope.newest
    return latest


def _forget_results(state: CustomerState, event: Event) -> None:
    """Drop cached `per` results that this event may have changed."""
    for name, scopes in state.per.items():
        if event.type == "customer_update":
            # Attributes are customer-wide, so every value's results may change.
            for scope in scopes.values():
                scope.cache = None
            continue
        value = getattr(event, name, None)
        if isinstance(value, str) and value in scopes:
            scopes[value].cache = None


def _rule_source(source: ChangeSource) -> ChangeSource:
    return "rule" if source == "manual" else source


def _is_manual(tag: str) -> bool:
    return tag.startswith(MANUAL_PREFIX)


def _position_key(position: Position) -> str:
    return f"{position.topic}:{position.partition}"


def _hash_event_id(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).hexdigest()


def _expire_recent(state: CustomerState, now: int) -> None:
    cutoff = now - DEDUP_MAX_AGE_MS
    state.recent = [(digest, recorded) for digest, recorded in state.recent if recorded >= cutoff]
