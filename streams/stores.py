"""faust-streaming's RocksDB store, placing each key in the partition its bytes hash to.

faust-streaming 0.15 keeps one RocksDB database per table partition and
takes the partition of a write from the stream event being processed. The
worker writes a batch's states after `take_events` returns, where no event
is current, so the stock store fails its assertion on the first write. The
worker's tables use the producer's partitioner (`use_partitioner=True`), so
a key's changelog partition, and so its database, is the one its bytes hash
to. Reads and deletes then go to that one database, instead of searching
every database for a key not seen before, as the stock store does.

Importing this module makes `rocksdb://` name this store in the process.
"""

from __future__ import annotations

from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksDBStore

from tagger.streams.partitioning import partition_for

__all__ = ["KeyPartitionedRocksDB"]


class KeyPartitionedRocksDB(RocksDBStore):
    """RocksDB table store whose partition for a key is the key's hash partition."""

    def _key_partition(self, key: bytes) -> int:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        return partition_for(key, partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self._key_partition(key)
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db_for_partition(self._key_partition(key)).get(key)
        return value

    def _del(self, key: bytes) -> None:
        self._db_for_partition(self._key_partition(key)).delete(key)

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None


STORES.aliases["rocksdb"] = f"{__name__}:{KeyPartitionedRocksDB.__name__}"
