"""Key layout of the Redis mirror and the Lua script that applies one customer's tags."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = [
    "APPLY_SCRIPT",
    "APPLY_SCRIPT_SHA",
    "ERASE_SCRIPT",
    "ERASE_SCRIPT_SHA",
    "MAX_EPOCH",
    "MAX_SEQ",
    "SEQ_TTL_MS",
    "apply_arguments",
    "customer_key",
    "erase_arguments",
    "mirror_seq",
    "rulebook_key",
    "seq_key",
    "tag_key",
]

# A customer's seq key outlives its last tag by 7 days, so an older update
# that is still being retried (a worker catching up after an outage) finds
# the newer seq and changes nothing, instead of bringing removed tags back.
SEQ_TTL_MS = 7 * 24 * 60 * 60 * 1000

# The seq key stores epoch * 2**32 + seq, so that it keeps growing when an
# erasure starts a customer's sequence again. Lua in Redis compares it as a
# double, which is exact up to 2**53: epochs below 2**21, seqs below 2**32.
# Epoch 0 gives the plain seq, so seq keys written before erasures existed
# keep their meaning.
_SEQ_BITS = 32
MAX_SEQ = 2**_SEQ_BITS - 1
MAX_EPOCH = 2 ** (53 - _SEQ_BITS) - 1


def mirror_seq(epoch: int, seq: int) -> int:
    """Return the value the seq key compares for change `seq` of `epoch`.

    Raises ValueError outside the range Lua compares exactly.
    """
    if not 0 <= epoch <= MAX_EPOCH or not 0 <= seq <= MAX_SEQ:
        raise ValueError(
            f"epoch {epoch} or seq {seq} is out of range: the mirror compares epochs up to "
            f"{MAX_EPOCH} and seqs up to {MAX_SEQ} exactly"
        )
    return (epoch << _SEQ_BITS) | seq


def customer_key(prefix: str, customer_id: str) -> str:
    """Hash of the customer's current tags: tag -> since (epoch ms, decimal string)."""
    return f"{prefix}customer:{customer_id}"


def tag_key(prefix: str, tag: str) -> str:
    """Sorted set of the customers holding `tag`, scored by since (epoch ms)."""
    return f"{prefix}tag:{tag}"


def seq_key(prefix: str, customer_id: str) -> str:
    """String holding the `mirror_seq` of the last change applied for the customer."""
    return f"{prefix}seq:{customer_id}"


def rulebook_key(prefix: str) -> str:
    """Hash of tag (or rule id) -> JSON labels, plus `__version__`."""
    return f"{prefix}rulebook"


# KEYS[1] customer hash, KEYS[2] seq key.
# ARGV[1] key prefix, ARGV[2] customer id, ARGV[3] `mirror_seq`, ARGV[4] seq TTL in
# ms, then ARGV[5..] the customer's full current tag set as tag, since pairs.
#
# The script also writes the `<prefix>tag:<tag>` sorted sets, which it does
# not declare in KEYS because they are only known once the old hash is read.
# That is fine on one Redis server, where a script runs atomically over the
# whole keyspace. On Redis Cluster those sets live in other slots, so there
# the customer hash is authoritative and the tag sets only converge.
# TODO: this script fails on Redis Cluster, because even its two declared
# keys hash to different slots, and the writer then drops the customers as
# `failed`. A cluster mode needs its own key layout and separate tag-set writes.
#
# Redis runs a script atomically, so a reader in another connection sees
# either the whole old tag set or the whole new one, never two tags of one
# exclusive group. Only Redis 6.2 commands are used (no Functions).
APPLY_SCRIPT = """
local customer_key = KEYS[1]
local seq_key = KEYS[2]
local prefix = ARGV[1]
local customer_id = ARGV[2]
local seq = tonumber(ARGV[3])
local seq_ttl_ms = ARGV[4]

local stored = tonumber(redis.call('GET', seq_key))
if stored ~= nil and stored >= seq then
  return 0
end

local new_tags = {}
for i = 5, #ARGV, 2 do
  new_tags[ARGV[i]] = ARGV[i + 1]
end

local old_tags = redis.call('HGETALL', customer_key)
for i = 1, #old_tags, 2 do
  local tag = old_tags[i]
  if new_tags[tag] == nil then
    redis.call('HDEL', customer_key, tag)
    redis.call('ZREM', prefix .. 'tag:' .. tag, customer_id)
  end
end

for i = 5, #ARGV, 2 do
  local tag = ARGV[i]
  local since = ARGV[i + 1]
  redis.call('HSET', customer_key, tag, since)
  redis.call('ZADD', prefix .. 'tag:' .. tag, since, customer_id)
end

if #ARGV >= 5 then
  -- SET without PX also clears an expiry left by an earlier empty tag set.
  redis.call('SET', seq_key, ARGV[3])
else
  -- Redis deletes a hash when its last field goes, so only the seq key is left.
  redis.call('SET', seq_key, ARGV[3], 'PX', seq_ttl_ms)
end
return 1
"""

APPLY_SCRIPT_SHA = hashlib.sha1(APPLY_SCRIPT.encode("utf-8"), usedforsecurity=False).hexdigest()


def apply_arguments(
    prefix: str, customer_id: str, seq: int, tags: dict[str, int]
) -> tuple[list[str], list[str]]:
    """Build the KEYS and ARGV of one `APPLY_SCRIPT` call.

    `seq` and the since values are passed as decimal strings, and the script
    compares seqs as Lua numbers (doubles), which is exact below 2**53.
    """
    keys = [customer_key(prefix, customer_id), seq_key(prefix, customer_id)]
    args = [prefix, customer_id, str(seq), str(SEQ_TTL_MS)]
    for tag, since in sorted(tags.items()):
        args.append(tag)
        args.append(str(since))
    return keys, args


# KEYS[1] customer hash, KEYS[2] seq key.
# ARGV[1] key prefix, ARGV[2] customer id, ARGV[3] fence, ARGV[4] seq TTL in
# ms, then ARGV[5..] tags the customer held in the table, whose sets are
# cleaned even where the hash lacks them.
#
# The fence is mirror_seq(new epoch, 0): above every write of the erased
# epochs and below every write of the new one. The script deletes the hash,
# removes the customer from each tag set of the hash and of ARGV, and leaves
# only the seq key, holding the fence and expiring like an empty tag set's.
# A seq key at or above the fence means this erasure, or a write of the new
# epoch, got there first, and the script changes nothing.
ERASE_SCRIPT = """
local customer_key = KEYS[1]
local seq_key = KEYS[2]
local prefix = ARGV[1]
local customer_id = ARGV[2]
local fence = tonumber(ARGV[3])

local stored = tonumber(redis.call('GET', seq_key))
if stored ~= nil and stored >= fence then
  return 0
end

local old_tags = redis.call('HKEYS', customer_key)
for i = 1, #old_tags do
  redis.call('ZREM', prefix .. 'tag:' .. old_tags[i], customer_id)
end
for i = 5, #ARGV do
  redis.call('ZREM', prefix .. 'tag:' .. ARGV[i], customer_id)
end
redis.call('DEL', customer_key)
redis.call('SET', seq_key, ARGV[3], 'PX', ARGV[4])
return 1
"""

ERASE_SCRIPT_SHA = hashlib.sha1(ERASE_SCRIPT.encode("utf-8"), usedforsecurity=False).hexdigest()


def erase_arguments(
    prefix: str, customer_id: str, fence: int, tags: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Build the KEYS and ARGV of one `ERASE_SCRIPT` call; `fence` is a `mirror_seq` value."""
    keys = [customer_key(prefix, customer_id), seq_key(prefix, customer_id)]
    args = [prefix, customer_id, str(fence), str(SEQ_TTL_MS), *sorted(tags)]
    return keys, args
