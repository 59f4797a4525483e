"""The rule engine: applies events and clock ticks to a customer's state and decides tag changes."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from tagger.rules.aggregates import (
    MAX_PER_VALUES,
    SPEND_KEY,
    Plan,
    avg_count_key,
    fold_event,
    make_plan,
    metrics_of,
    prune,
)
from tagger.rules.evaluate import (
    Compiled,
    Compiler,
    Context,
    changes_only_at_timers,
    collect_timers,
    evaluate,
    next_change,
    reason_values,
)
from tagger.rules.expression import Metric, Node, walk
from tagger.rules.rulebook import MANUAL_GROUP, MANUAL_PREFIX, PARAM_RE, Rule, Rulebook
from tagger.rules.state import CustomerState, Scope, ScopeCache
from tagger.schemas.events import Event
from tagger.schemas.tag_change import Action, ChangeSource, TagChange

__all__ = [
    "DEDUP_MAX_AGE_MS",
    "DEDUP_MAX_EVENTS",
    "MAX_MANUAL_TAGS",
    "MAX_PENDING_EVENTS",
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
# Pending events one customer may have within the allowed lateness. A customer
# who sends more than this within the lateness is a bot or a replay error. At
# the cap, 64 purchases with UUID event ids encode to about 15 KB.
MAX_PENDING_EVENTS: Final = 64
# The events that move the cart, which `cart_age` reads (see rules/aggregates.py).
_CART_EVENTS: Final = frozenset({"add_to_cart", "remove_from_cart", "purchase"})
# Metrics over a series, whose windowed value changes only as entries enter or leave.
_SERIES_METRICS: Final = frozenset({"count_window", "net_spend", "sum", "min", "max", "avg"})


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
    True when the event's time is before the watermark. `late_policy` names
    the rulebook's policy that handled a late event (`apply`,
    `late_correction` or `ignore`), and is empty for an event that is not late.
    """

    changes: tuple[TagChange, ...]
    duplicate: bool
    late: bool
    late_policy: str = ""


class Engine:
    """Decides one rulebook's tag changes. It keeps no per-customer data and does no I/O.

    Everything happens in event time. An event whose time is after the
    watermark (clock − allowed lateness) stays pending in the customer's
    state until the watermark reaches it. So events that arrive out of order
    within the allowed lateness give the same changes as in time order. At one
    instant, changes due then come first, then pending events in arrival order.
    """

    def __init__(self, rulebook: Rulebook, *, select_rules: bool = True) -> None:
        """`select_rules=False` evaluates every rule at every event and due instant,
        which gives the same changes more slowly; tests compare the two."""
        self.rulebook = rulebook
        self._select = select_rules
        self._plan: Plan = make_plan(rulebook.rules)
        self._order = {rule.id: index for index, rule in enumerate(rulebook.rules)}
        self._rules = {rule.id: rule for rule in rulebook.rules}
        self._manual_order = len(rulebook.rules)
        # Timed parts of every rule, grouped by the kind of scope they read:
        # None for customer-wide rules, else the `per` field.
        expressions: dict[str | None, list[Node]] = {}
        for rule in rulebook.rules:
            expressions.setdefault(rule.per, []).extend(_expressions(rule))
        self._timers = {per: collect_timers(nodes) for per, nodes in expressions.items()}
        self._per_rules: dict[str, list[Rule]] = {}
        for rule in rulebook.rules:
            if rule.per is not None:
                self._per_rules.setdefault(rule.per, []).append(rule)
        # Conditions are compiled once, when the engine is built.
        compiler = Compiler()
        self._when: dict[str, Compiled] = {}
        self._leave: dict[str, Compiled] = {}
        self._rank: dict[str, Compiled] = {}
        for rule in rulebook.rules:
            self._when[rule.id] = compiler.compile(rule.condition)
            if rule.leave is not None:
                self._leave[rule.id] = compiler.compile(rule.leave)
            if rule.rank is not None:
                self._rank[rule.id] = compiler.compile(rule.rank)
        self._affected_by_type: dict[str, frozenset[str]] = {}
        self._exclusive_groups: dict[str, frozenset[str]] = {}
        for rule in rulebook.rules:
            if rule.per is None and rulebook.groups[rule.group].exclusive:
                members = self._exclusive_groups.get(rule.group, frozenset())
                self._exclusive_groups[rule.group] = members | {rule.id}
        # For due instants: rules whose every timed part is a duration window
        # over the customer's series, with those (series key, window) pairs;
        # every other customer-wide rule is evaluated at each due instant.
        self._windowed: list[tuple[str, tuple[tuple[str, int], ...]]] = []
        self._due_always: set[str] = set()
        for rule in rulebook.rules:
            if rule.per is not None:
                continue
            windows = _windows_only(rule)
            if windows is None:
                self._due_always.add(rule.id)
            elif windows:
                self._windowed.append((rule.id, windows))

    def new_state(self, customer_id: str, *, epoch: int = 0) -> CustomerState:
        """Return the state of a customer never seen before, or not seen since an erasure.

        `epoch` is the customer's epoch after its last erasure (0 when it was
        never erased), so that its change ids never repeat an erased one.
        """
        return CustomerState(
            customer_id=customer_id, epoch=epoch, rulebook_version=self.rulebook.version
        )

    def erase(
        self, state: CustomerState, *, at: int, now: int, request_id: str | None = None
    ) -> tuple[TagChange, ...]:
        """Remove every tag of the customer and return the removals, with source `erasure`.

        The removals continue the sequence of the customer's current epoch,
        so their change ids are new, and hold from `at` (the partition clock,
        raised to the customer's own clock). Their reasons carry no metric
        values. The caller deletes the state afterwards.
        """
        time = max(at, state.clock)
        changes: list[TagChange] = []
        for tag in sorted(state.tags, key=self._tag_order):
            rule = MANUAL_GROUP if _is_manual(tag) else tag.split(":", 1)[0]
            reason: dict[str, Any] = {"rule": rule, "when": "", "values": {}}
            if request_id is not None:
                reason["erasure_request_id"] = request_id
            changes.append(
                self._record(
                    state, tag, "removed", at=time, now=now, source="erasure", reason=reason
                )
            )
        state.tags.clear()
        state.due = None
        return tuple(changes)

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
        """Apply one event and return the tag changes decided by it and by time up to the watermark.

        `clock` is the partition clock after this event moved it and `now` the
        wall time (ms) stamped as `emitted_at`. First everything due up to the
        watermark W = clock − allowed lateness is applied, as `advance` does.
        Then an event after W stays pending until W reaches it, and an event
        at W is applied at W. An event before W is late, and the rulebook's
        late policy handles it.
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
        changes = self._advance(state, watermark, now)
        # An event stamped after the clock (later than wall time) takes the
        # clock's place in time order, but its windowed entries still count
        # from its own time.
        time = min(event.ts, clock)
        late = event.ts < watermark
        policy = self.rulebook.late_policy
        if time > watermark:
            changes.extend(self._add_pending(state, event, time, now))
        elif not late or policy == "apply":
            changes.extend(self._apply_event(state, event, watermark, now=now, source="rule"))
        elif policy == "late_correction":
            changes.extend(
                self._apply_event(
                    state, event, watermark, now=now, source="late_correction", late_event=event
                )
            )

        if position is not None:
            state.applied[_position_key(position)] = position.offset
        state.recent.append((event_hash, now))
        del state.recent[:-DEDUP_MAX_EVENTS]
        return Outcome(
            tuple(changes), duplicate=False, late=late, late_policy=policy if late else ""
        )

    def advance(self, state: CustomerState, *, watermark: int, now: int) -> tuple[TagChange, ...]:
        """Apply pending events and fire due changes up to `watermark`, in time order.

        Each change has `at` = the time of the event or due instant that
        decided it.
        """
        return tuple(self._advance(state, watermark, now))

    def reevaluate(self, state: CustomerState, *, clock: int, now: int) -> tuple[TagChange, ...]:
        """Re-evaluate a customer decided under another rulebook version; no-op for this version.

        `clock` is the partition clock. The customer is evaluated at its
        watermark (clock − allowed lateness, the clock itself with no allowed
        lateness), or at its earliest pending event if that is earlier, so that
        pending events still apply in time order. It is never evaluated before
        its own clock. The differences are returned with `source:
        rulebook_change` and `at` = that instant, and the state records this
        rulebook's version. Pending events and changes now due are left to the
        next `advance`.
        """
        return tuple(self._migrate(state, clock - self.rulebook.allowed_lateness_ms, now))

    def _advance(self, state: CustomerState, watermark: int, now: int) -> list[TagChange]:
        changes = self._migrate(state, watermark, now)
        changes.extend(self._run_until(state, watermark, now))
        return changes

    def _migrate(self, state: CustomerState, watermark: int, now: int) -> list[TagChange]:
        """Re-evaluate a state last evaluated under another rulebook, at the partition's watermark.

        The watermark, not the customer's own clock, because a rulebook takes
        effect when a worker starts with it: the customer's clock may be months
        old, and a change the new rulebook decides must not claim to hold from
        before then.
        """
        if state.rulebook_version == self.rulebook.version:
            return []

        instant = watermark
        if state.pending:
            instant = min(instant, state.pending[0][0])
        for scopes in state.per.values():
            for scope in scopes.values():
                scope.cache = None
        changes = self._evaluate(
            state, max(instant, state.clock), now=now, source="rulebook_change", manual=None
        )
        state.rulebook_version = self.rulebook.version
        return changes

    def _run_until(self, state: CustomerState, limit: int, now: int) -> list[TagChange]:
        """Fire due instants and apply pending events at or before `limit`, in time order."""
        changes: list[TagChange] = []
        while state.due is not None and state.due <= limit:
            instant = state.due
            # Changes due at an instant come before events at that instant. When
            # `due` is a pending event's time and no rule is due, this finds nothing.
            affected = self._affected_at(state, instant)
            changes.extend(
                self._evaluate(
                    state, instant, now=now, source="rule", manual=None, affected=affected
                )
            )
            while state.pending and state.pending[0][0] <= instant:
                _, event = state.pending.pop(0)
                changes.extend(self._apply_event(state, event, instant, now=now, source="rule"))
        return changes

    def _add_pending(
        self, state: CustomerState, event: Event, time: int, now: int
    ) -> list[TagChange]:
        """Keep an event pending until the watermark reaches `time`."""
        index = bisect.bisect_right(state.pending, time, key=_pending_time)
        state.pending.insert(index, (time, event))
        state.due = time if state.due is None else min(state.due, time)
        if len(state.pending) <= MAX_PENDING_EVENTS:
            return []
        # TODO: the earliest pending event is applied before the watermark reaches
        # it, so an event that arrives afterwards with an earlier time is
        # applied at the customer's clock (see _evaluate), out of time order.
        return self._run_until(state, state.pending[0][0], now)

    def _apply_event(
        self,
        state: CustomerState,
        event: Event,
        time: int,
        *,
        now: int,
        source: ChangeSource,
        late_event: Event | None = None,
    ) -> list[TagChange]:
        """Fold one event into the aggregates and evaluate at `time` (or the state's clock)."""
        # A state evaluated before has the tags of its last evaluation, and
        # every due instant since then has fired, so only the rules that read
        # what this event feeds can decide differently. A new state (clock 0)
        # has never been evaluated.
        affected = self._affected(event.type) if self._select and state.clock > 0 else None
        time = max(time, state.clock)
        fold_event(state, event, self._plan, horizon=time, held_values=self._held_params(state))
        _forget_results(state, event)
        manual = self._manual_tags(state, event)
        return self._evaluate(
            state,
            time,
            now=now,
            source=source,
            manual=manual,
            late_event=late_event,
            affected=affected,
        )

    def _affected(self, event_type: str) -> frozenset[str]:
        """Return the ids of the customer-wide rules an event of this type may decide differently.

        Those reading an aggregate, the cart or an attribute that such an
        event feeds, those whose value may change with time between due
        instants, those reading `has_tag`, and every rule of an exclusive
        group that has one of these.
        """
        known = self._affected_by_type.get(event_type)
        if known is not None:
            return known
        fed = {key for _, key in self._plan.totals.by_type.get(event_type, ())}
        affected = {
            rule.id
            for rule in self.rulebook.rules
            if rule.per is None and self._may_change(rule, event_type, fed)
        }
        known = self._affected_by_type[event_type] = self._with_groups(affected)
        return known

    def _affected_at(self, state: CustomerState, time: int) -> frozenset[str] | None:
        """Return the ids of the customer-wide rules that may decide differently at a due instant.

        Between due instants no timed value changes, so a rule whose timed
        parts are all duration windows over the series changes only when an
        entry of one of them enters (time = entry) or leaves (time = entry +
        window) at `time`. Other rules are always evaluated. None (every
        rule) for a state never evaluated, or one whose clock is past `time`.
        """
        if not self._select or state.clock <= 0 or state.clock > time:
            return None
        series = state.totals.series
        affected = set(self._due_always)
        for rule_id, windows in self._windowed:
            for key, window in windows:
                entries = series.get(key)
                if entries and (
                    _has_entry_at(entries, time) or _has_entry_at(entries, time - window)
                ):
                    affected.add(rule_id)
                    break
        return self._with_groups(affected)

    def _with_groups(self, rule_ids: set[str]) -> frozenset[str]:
        """Add every rule of an exclusive group that has one of `rule_ids`: one decides the rest."""
        expanded = set(rule_ids)
        for members in self._exclusive_groups.values():
            if not members.isdisjoint(rule_ids):
                expanded |= members
        return frozenset(expanded)

    def _may_change(self, rule: Rule, event_type: str, fed: set[str]) -> bool:
        if not all(changes_only_at_timers(node) for node in _expressions(rule)):
            return True
        for metric in metrics_of(rule):
            kind = metric.kind
            if kind == "has_tag":
                return True
            if kind == "cart_age":
                if event_type in _CART_EVENTS:
                    return True
            elif kind == "attribute":
                if event_type == "customer_update":
                    return True
            elif _metric_keys(metric) & fed:
                return True
        return False

    def _evaluate(
        self,
        state: CustomerState,
        time: int,
        *,
        now: int,
        source: ChangeSource,
        manual: dict[str, int] | None,
        late_event: Event | None = None,
        affected: frozenset[str] | None = None,
    ) -> list[TagChange]:
        """Evaluate the rules at `time` and record the changes from the held tags, at `time`.

        `affected` limits the customer-wide rules evaluated to those ids;
        every other one keeps its last decision, which the held tags record.
        None evaluates every rule.

        Also moves the state's clock to `time` and computes its next due time.
        A `time` before the state's clock is raised to it: evaluation never
        goes back in time, because pruned aggregates cannot be restored.
        """
        time = max(time, state.clock)
        prune(state, self._plan, time)
        held_manual = {tag: since for tag, since in state.tags.items() if _is_manual(tag)}
        manual_after = held_manual if manual is None else manual
        desired = self._desired(state, time, manual_after, affected)
        # The tags has_tag sees in reasons: those decided at this instant.
        visible = {**manual_after, **dict.fromkeys(desired, time)}

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
            reason = self._reason(state, tag, time, "removed", visible)
            rule = self._rules.get(tag.split(":", 1)[0])
            if rule is not None and not _is_manual(tag):
                winner = winners.get(rule.group)
                if winner is not None and self.rulebook.groups[rule.group].exclusive:
                    reason["replaced_by"] = winner
                    if reason.get("decided_by") not in (None, "leave_when"):
                        reason["decided_by"] = "group"
            _note_late_event(reason, late_event)
            changes.append(
                self._record(state, tag, "removed", at=time, now=now, source=source, reason=reason)
            )
            del state.tags[tag]
        for tag in added:
            reason = self._reason(state, tag, time, "added", visible)
            _note_late_event(reason, late_event)
            changes.append(
                self._record(state, tag, "added", at=time, now=now, source=source, reason=reason)
            )
            state.tags[tag] = time
            rule = self._rules.get(tag.split(":", 1)[0])
            if rule is not None and rule.cooldown_ms is not None and not _is_manual(tag):
                state.last_added[tag] = time
        self._prune_cooldowns(state, time)

        state.clock = max(state.clock, time)
        state.due = self._next_due(state)
        return changes

    def _desired(
        self,
        state: CustomerState,
        time: int,
        manual: Mapping[str, int],
        affected: frozenset[str] | None = None,
    ) -> dict[str, Rule]:
        """Return the rule tags the customer should hold at `time`, each with its rule.

        A tag not held enters when `when` is true and no cooldown runs. A held
        tag stays while `when` is true, or, with `leave_when`, until
        `leave_when` is true. In an exclusive group the first rule in file
        order that enters or stays wins, so a held tag with `leave_when` keeps
        its place unless a rule above it enters.

        Rules run in the rulebook's evaluation order, so that `has_tag` sees
        the tags decided at this instant for the rules it reads, and the
        manual tags in `manual`.
        """
        desired: dict[str, Rule] = {}
        taken_groups: set[str] = set()
        visible = dict(manual)
        # One context for every customer-wide rule: `visible` grows in place.
        context = self._context(state, state.totals, time, visible)
        for rule in self.rulebook.evaluation_order or self.rulebook.rules:
            exclusive = self.rulebook.groups[rule.group].exclusive
            if exclusive and rule.group in taken_groups:
                continue
            if rule.per is None:
                if affected is not None and rule.id not in affected:
                    tagged = rule.id in state.tags
                else:
                    tagged = self._holds(state, rule, rule.id, context, time)
                if tagged:
                    desired[rule.id] = rule
                    visible[rule.id] = time
                    taken_groups.add(rule.group)
                continue
            for value in self._matching_values(state, rule, time):
                desired[f"{rule.id}:{value}"] = rule
                visible[f"{rule.id}:{value}"] = time
        return desired

    def _holds(
        self, state: CustomerState, rule: Rule, tag: str, context: Context, time: int
    ) -> bool:
        entering = self._when[rule.id](context) is True
        if tag in state.tags:
            if entering or rule.leave is None:
                return entering
            return self._leave[rule.id](context) is not True
        return entering and not _cooling(state, rule, tag, time)

    def _matching_values(self, state: CustomerState, rule: Rule, time: int) -> list[str]:
        assert rule.per is not None
        matching: list[tuple[int | Decimal, int, str]] = []
        for value, scope in state.per.get(rule.per, {}).items():
            results = self._scope_results(state, rule.per, scope, time)
            tag = f"{rule.id}:{value}"
            match = results.matches.get(rule.id)
            if tag in state.tags:
                match = match or results.staying.get(rule.id)
            elif match is not None and _cooling(state, rule, tag, time):
                match = None
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
        staying: dict[str, tuple[int | Decimal, int]] = {}
        for rule in self._per_rules[per]:
            entering = self._when[rule.id](context) is True
            if not entering and (rule.leave is None or self._leave[rule.id](context) is True):
                continue
            rank = self._rank[rule.id](context) if rule.rank is not None else 0
            assert isinstance(rank, int | Decimal)
            result = (rank, _latest_counted(rule, scope, time))
            if entering:
                matches[rule.id] = result
            else:
                staying[rule.id] = result
        due = next_change(self._timers[per], context)
        scope.cache = ScopeCache(time, due, matches, staying)
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
        for tag, added in state.last_added.items():
            rule = self._rules.get(tag.split(":", 1)[0])
            if tag not in state.tags and rule is not None and rule.cooldown_ms is not None:
                candidates.append(added + rule.cooldown_ms)
        if state.pending:
            candidates.append(state.pending[0][0])
        return min((due for due in candidates if due is not None), default=None)

    def _prune_cooldowns(self, state: CustomerState, time: int) -> None:
        """Forget add times whose cooldown has ended, and keep at most MAX_PER_VALUES per rule."""
        per_rule: dict[str, list[tuple[int, str]]] = {}
        for tag, added in list(state.last_added.items()):
            rule = self._rules.get(tag.split(":", 1)[0])
            if rule is None or rule.cooldown_ms is None or added + rule.cooldown_ms <= time:
                del state.last_added[tag]
            elif rule.per is not None:
                per_rule.setdefault(rule.id, []).append((added, tag))
        for entries in per_rule.values():
            if len(entries) > MAX_PER_VALUES:
                # TODO: a value whose add time is dropped here may be added
                # again before its cooldown ends.
                entries.sort()
                for _, tag in entries[: len(entries) - MAX_PER_VALUES]:
                    del state.last_added[tag]

    def _reason(
        self,
        state: CustomerState,
        tag: str,
        time: int,
        action: Action,
        visible: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        if _is_manual(tag):
            return {"rule": MANUAL_GROUP, "when": "", "values": {}}

        rule_id, _, param = tag.partition(":")
        rule = self._rules.get(rule_id)
        if rule is None:
            return {"rule": rule_id, "when": "", "values": {}}
        scope = state.totals
        if rule.per is not None:
            scope = state.per.get(rule.per, {}).get(param, Scope())
        context = self._context(state, scope, time, visible)
        reason: dict[str, Any] = {"rule": rule.id, "when": rule.when}
        if rule.leave is not None:
            reason["leave_when"] = rule.leave_when
            reason["decided_by"] = _decided_by(rule, context, action)
        reason["values"] = reason_values(_expressions(rule), context)
        return reason

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
            # An erasure removes manual tags too, with source `erasure`.
            source="manual" if _is_manual(tag) and source != "erasure" else source,
            reason=reason,
            group=self.rulebook.group_for(tag),
            labels=self.rulebook.labels_for(tag),
        )
        state.outbox.append(change.to_dict())
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
            # the caller; late manual events also apply in arrival order.
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

    def _context(
        self,
        state: CustomerState,
        scope: Scope,
        time: int,
        tags: Mapping[str, int] | None = None,
    ) -> Context:
        return Context(
            state, scope, time, self.rulebook.currency, self.rulebook.currency_exponent, tags
        )

    def _tag_order(self, tag: str) -> tuple[int, str]:
        if _is_manual(tag):
            return (self._manual_order, tag)
        return (self._order.get(tag.split(":", 1)[0], -1), tag)


def _windows_only(rule: Rule) -> tuple[tuple[str, int], ...] | None:
    """Return the (series key, window) pairs of a rule whose only timed parts are duration windows.

    None when the rule reads anything else that changes with time alone
    (durations, calendars, distinct counts, sequences), or `has_tag`, or has
    a cooldown.
    """
    if rule.cooldown_ms is not None:
        return None
    windows: dict[tuple[str, int], None] = {}
    for metric in metrics_of(rule):
        if metric.kind in ("count", "attribute", "last"):
            continue
        if metric.kind not in _SERIES_METRICS or metric.calendar is not None:
            return None
        if metric.window is not None:
            for key in sorted(_metric_keys(metric)):
                windows[(key, metric.window)] = None
    return tuple(windows)


def _has_entry_at(entries: list[list[int]], time: int) -> bool:
    index = bisect.bisect_left(entries, time, key=_entry_time)
    return index < len(entries) and entries[index][0] == time


def _entry_time(entry: list[int]) -> int:
    return entry[0]


def _metric_keys(metric: Metric) -> set[str]:
    """Return the aggregate keys a metric reads (see rules/aggregates.py)."""
    if metric.kind == "net_spend":
        return {SPEND_KEY}
    if metric.kind == "avg":
        return {metric.key, avg_count_key(metric)}
    return {metric.key}


def _expressions(rule: Rule) -> list[Node]:
    """Return the rule's condition, then its `leave_when` and `rank_by` when it has them."""
    expressions: list[Node] = [rule.condition]
    if rule.leave is not None:
        expressions.append(rule.leave)
    if rule.rank is not None:
        expressions.append(rule.rank)
    return expressions


def _cooling(state: CustomerState, rule: Rule, tag: str, time: int) -> bool:
    """Return True when the rule's cooldown since the tag's last add still runs at `time`."""
    added = state.last_added.get(tag)
    return rule.cooldown_ms is not None and added is not None and time < added + rule.cooldown_ms


def _decided_by(rule: Rule, context: Context, action: Action) -> str:
    """Name the condition that decided a change of a rule with `leave_when`.

    An add is decided by `when`. A removal is decided by `leave_when` when it
    is true. Otherwise the tag lost its place to another value of a `per`
    rule (`limit`), or to a higher rule of its exclusive group (`group`, which
    the caller records).
    """
    if action == "added":
        return "when"
    assert rule.leave is not None
    if evaluate(rule.leave, context) is True:
        return "leave_when"
    return "limit" if rule.per is not None else "when"


def _note_late_event(reason: dict[str, Any], late_event: Event | None) -> None:
    if late_event is not None:
        reason["late_event"] = {"event_id": late_event.event_id, "ts": late_event.ts}


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


def _pending_time(entry: tuple[int, Event]) -> int:
    return entry[0]


def _is_manual(tag: str) -> bool:
    return tag.startswith(MANUAL_PREFIX)


def _position_key(position: Position) -> str:
    return f"{position.topic}:{position.partition}"


def _hash_event_id(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).hexdigest()


def _expire_recent(state: CustomerState, now: int) -> None:
    cutoff = now - DEDUP_MAX_AGE_MS
    state.recent = [(digest, recorded) for digest, recorded in state.recent if recorded >= cutoff]
