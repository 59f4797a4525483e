"""Scale stages: two workers against one, and the worker over more customers.

`scale2` runs one worker, then two workers in one consumer group, both with
the same standby replicas (1 by default), each configuration on its own fresh
copy of the input with its own app id and Redis prefix. `customers` runs the worker stage on
inputs of the same event count over each customer count.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import click
import orjson
import structlog

from bench.data import BaseEvent, BenchInput
from bench.kafka_io import ProcessTimes, produce, rss_bytes
from bench.worker_stage import counters, get_path, measure_worker, start_worker, stop_worker
from tagger.streams.config import Settings
from tagger.streams.embedded import free_port
from tagger.streams.topics import create_topics

if TYPE_CHECKING:
    from bench.runner import Context

__all__ = ["measure_customers", "measure_scale2"]

# Events per customer within this factor of each other count as the same shape.
_SHAPE_TOLERANCE = 1.1

log = structlog.get_logger(__name__)

_POLL_INTERVAL_S = 0.1
_EVENTS_COUNTER = "tagger_events_total"

Records = Callable[[], Iterable[tuple[bytes, bytes, int]]]


def measure_scale2(
    context: Context, records: Records, *, standby_replicas: int, timeout_s: float
) -> dict[str, Any]:
    """Measure one worker, then two in one group, on the same input; return both and the ratio."""
    one = _measure_group(context, records, 1, standby_replicas, timeout_s)
    log.info("one worker measured", **one)
    two = _measure_group(context, records, 2, standby_replicas, timeout_s)
    log.info("two workers measured", **two)
    ratio = two["events_per_s"] / one["events_per_s"] if one["events_per_s"] else None
    return {
        "standby_replicas": standby_replicas,
        "one_worker": one,
        "two_workers": two,
        "two_over_one": None if ratio is None else round(ratio, 3),
    }


def _measure_group(
    context: Context, records: Records, count: int, standby_replicas: int, timeout_s: float
) -> dict[str, Any]:
    """Run `count` workers in one group and return the group's events/s and CPU use.

    The workers start on an empty input topic, and the input is produced only
    when every worker is assigned partitions and all of them are recovered. So the
    group has settled before any event arrives: no rebalance and no table
    recovery falls inside the measured window, and neither worker gets a head
    start on partitions it is about to lose. The clock starts when the
    producer has finished. The events counted are the input less what the
    workers had processed by then (their `tagger_events_total`). It stops at
    the first poll where every worker's partitions are caught up, nothing
    waits for Redis, and the workers' counts add up to the whole input.
    """
    name = f"scale{count}"
    topic = f"{context.run_id}-{name}-events"
    base = dataclasses.replace(
        context.worker_settings(name), input_topics=(topic,), standby_replicas=standby_replicas
    )
    group = [
        dataclasses.replace(
            base, web_port=free_port(), data_dir=str(context.workdir / f"{name}-w{index}-data")
        )
        for index in range(count)
    ]
    create_topics(base)
    processes = [
        start_worker(settings, context.workdir / f"{name}-w{index}.log", profile_output=None)
        for index, settings in enumerate(group)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        settle_seconds = _wait_settled(context, group, processes, deadline)
        produce_seconds = produce(context.bootstrap, topic, records())
        figures = _follow_group(context, group, processes, deadline)
    finally:
        for process in processes:
            stop_worker(process, profiled=False)
    return {
        "workers": count,
        **figures,
        "settle_seconds": round(settle_seconds, 1),
        "produce_seconds": round(produce_seconds, 2),
    }


def _statuses(group: list[Settings]) -> list[dict[str, Any] | None]:
    statuses = []
    for settings in group:
        body = get_path(settings, "/status")
        statuses.append(orjson.loads(body) if body else None)
    return statuses


def _check_alive(context: Context, processes: list[subprocess.Popen[bytes]]) -> None:
    for index, process in enumerate(processes):
        if process.poll() is not None:
            raise click.ClickException(
                f"worker {index} exited with code {process.returncode}; "
                f"see {context.workdir}/scale{len(processes)}-w{index}.log"
            )


def _covers_all_partitions(context: Context, statuses: list[dict[str, Any] | None]) -> bool:
    """Return True when every worker has recovered partitions and together they have all."""
    held: set[str] = set()
    for status in statuses:
        partitions = (status or {}).get("partitions", {})
        if not partitions or not all(view["index_ready"] for view in partitions.values()):
            return False
        held.update(partitions)
    return len(held) == context.partitions


def _wait_settled(
    context: Context,
    group: list[Settings],
    processes: list[subprocess.Popen[bytes]],
    deadline: float,
) -> float:
    started = time.monotonic()
    while time.monotonic() < deadline:
        _check_alive(context, processes)
        statuses = _statuses(group)
        if _covers_all_partitions(context, statuses):
            held = [sorted((status or {})["partitions"], key=int) for status in statuses]
            log.info("group settled", workers=len(group), partitions=held)
            return time.monotonic() - started
        time.sleep(_POLL_INTERVAL_S)
    raise click.ClickException(f"{len(group)} workers did not settle in time")


def _processed(group: list[Settings]) -> float:
    """Return the events the group's workers have processed, from their /metrics."""
    total = 0.0
    for settings in group:
        totals = counters(settings)
        if not totals:
            raise click.ClickException(f"no /metrics from the worker on port {settings.web_port}")
        total += totals.get(_EVENTS_COUNTER, 0.0)
    return total


def _caught_up(context: Context, statuses: list[dict[str, Any] | None]) -> bool:
    if not _covers_all_partitions(context, statuses):
        return False
    for status in statuses:
        assert status is not None
        if not all(view["caught_up"] for view in status["partitions"].values()):
            return False
        if status["mirror"]["pending"] != 0:
            return False
    return True


def _follow_group(
    context: Context,
    group: list[Settings],
    processes: list[subprocess.Popen[bytes]],
    deadline: float,
) -> dict[str, Any]:
    pids = {f"worker{index + 1}": process.pid for index, process in enumerate(processes)}
    times = ProcessTimes({**pids, **context.server_pids})
    times.sample()
    started = time.monotonic()
    processed_before = _processed(group)

    while time.monotonic() < deadline:
        _check_alive(context, processes)
        times.sample()
        if _caught_up(context, _statuses(group)) and _processed(group) >= context.events:
            break
        time.sleep(_POLL_INTERVAL_S)
    else:
        raise click.ClickException(f"{len(group)} workers did not catch up in time")

    seconds = time.monotonic() - started
    events = round(context.events - processed_before)
    cpu = times.shares(seconds)
    workers_cpu = [cpu[name] for name in pids]
    workers_total = (
        None
        if any(share is None for share in workers_cpu)
        else round(sum(share for share in workers_cpu if share is not None), 2)
    )
    return {
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1) if seconds > 0 else 0.0,
        "processed_before_clock": round(processed_before),
        "cpu_cores": {**cpu, "workers": workers_total},
        "rss_bytes": {name: rss_bytes(pid) for name, pid in pids.items()},
    }


def measure_customers(
    context: Context,
    base: list[BaseEvent],
    counts: list[int],
    *,
    events_per_customer: float | None = None,
    timeout_s: float,
) -> dict[str, Any]:
    """Run the worker stage over each customer count, on `context.events` events each, or on
    `events_per_customer` times the count.

    Each count gets its own input topic, app id and Redis prefix. Besides the
    worker's figures, each records the input's shape: distinct customers
    actually produced, events per customer and sample customers' split, since
    with fewer events than customers every customer gets one event or none.
    With the same event count, more customers means fewer events each, and a
    customer's first event makes more tag changes than its later ones;
    `events_per_customer` holds the shape instead.
    """
    sizes = {
        customers: (
            context.events
            if events_per_customer is None
            else max(1, round(customers * events_per_customer))
        )
        for customers in counts
    }
    if any(events < customers for customers, events in sizes.items()):
        # At a count above its events, each customer gets about one event, so
        # all such counts give nearly the same input.
        log.warning(
            "fewer events than customers: the larger counts cannot all appear",
            events=sizes,
            customer_counts=counts,
        )
    results: dict[str, Any] = {}
    for customers in counts:
        events = sizes[customers]
        run_id = f"{context.run_id}c{customers}"
        sub = dataclasses.replace(
            context,
            run_id=run_id,
            topic=f"{run_id}-events",
            events=events,
            customers=customers,
            workdir=context.workdir / f"customers-{customers}",
        )
        sub.workdir.mkdir(parents=True, exist_ok=True)
        create_topics(sub.worker_settings("worker"))
        bench_input = BenchInput(base, events, customers)
        distinct: set[bytes] = set()
        produce(context.bootstrap, sub.topic, _counting(bench_input.records(), distinct))
        log.info(
            "customers stage starting", customers=customers, events=events, distinct=len(distinct)
        )
        figures = measure_worker(sub, None, timeout_s=timeout_s)
        changes = figures.get("counters", {}).get("tagger_tag_changes_total")
        figures["input"] = {
            "customers": customers,
            "events": events,
            "distinct_customers": len(distinct),
            "events_per_customer": round(events / len(distinct), 2) if distinct else None,
            "customers_per_sample_customer": bench_input.split,
            "tag_changes_per_event": round(changes / events, 2) if changes else None,
        }
        log.info("customers stage finished", customers=customers, **figures)
        results[str(customers)] = figures
    rates = [results[str(count)]["events_per_s"] for count in counts]
    shapes = [results[str(count)]["input"]["events_per_customer"] or 0.0 for count in counts]
    # Short inputs use only part of the samples, and leave some customer ids without events.
    shape_held = min(shapes) > 0 and max(shapes) <= _SHAPE_TOLERANCE * min(shapes)
    if not shape_held:
        log.warning(
            "events per customer differ between customer counts: the ratio compares inputs "
            "of different shapes",
            events_per_customer=shapes,
        )
    return {
        "shape_held": shape_held,
        "events": context.events if events_per_customer is None else None,
        "events_per_customer": events_per_customer,
        "by_customers": results,
        "last_over_first": round(rates[-1] / rates[0], 3) if rates[0] else None,
    }


def _counting(
    records: Iterable[tuple[bytes, bytes, int]], keys: set[bytes]
) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield `records` unchanged, adding each key to `keys`."""
    for record in records:
        keys.add(record[0])
        yield record
