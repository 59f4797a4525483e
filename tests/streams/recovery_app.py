"""A minimal worker for the table recovery test: fill two tables, or dump them after recovery.

Run as `python recovery_app.py BOOTSTRAP APP_ID MODE PROBE DUMP_PATH PORT` where MODE is
`fill` (count records per key into table `one`, fed in one take() batch, and
table `many`, fed in batches of 7) or `dump` (write both tables to DUMP_PATH
as JSON once recovery has finished). The test stops the process with SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from tagger.streams.faust_app import TaggerApp, TaggerWorker


def main() -> None:
    bootstrap, app_id, mode, probe, dump_path, port = sys.argv[1:7]
    TaggerApp.probe_end_offsets = probe == "probe"
    app = TaggerApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=2,
        topic_disable_leader=True,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=int(port),
    )
    tables = {
        name: app.Table(
            name,
            default=None,
            partitions=2,
            key_type=bytes,
            value_type=bytes,
            use_partitioner=True,
        )
        for name in ("one", "many")
    }
    dump = Path(dump_path)

    def write_dump() -> None:
        content = {
            name: {key.decode(): int(value) for key, value in table.items()}
            for name, table in tables.items()
        }
        # Written whole, then renamed, so the test never reads half a file.
        partial = dump.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(content))
        partial.replace(dump)

    if mode == "fill":
        for name, take in (("one", 100_000), ("many", 7)):
            topic = app.topic(
                f"{app_id}-{name}-in",
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=2,
            )
            table = tables[name]

            async def count(stream: Any, table: Any = table, take: int = take) -> None:
                async for events in stream.take_events(take, within=1.0):
                    for event in events:
                        key = event.message.key
                        table[key] = str(int(table.get(key) or 0) + 1).encode()
                    write_dump()

            app.agent(topic, name=f"{app_id}-{name}-count")(count)
    else:

        async def on_recovered() -> None:
            write_dump()

        tables["many"].on_recover(on_recovered)

    TaggerWorker(app, loglevel="warn", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
