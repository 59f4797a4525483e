"""Key layout of the Redis mirror and the Lua script that applies one customer's tags."""

from __future__ import annotations

import hashlib

__all__ = [
    "APPLY_SCRIPT",
    "APPLY_SCRIPT_SHA",
    "SEQ_TTL_MS",
    "apply_arguments",
    "customer_key",
    "rulebook_key",
    "seq_key",
    "tag_key",
]

# A customer's seq key outlives its last tag by 7 days, so an older update
# that is still being retried (a worker catching up after an outage) finds
# the newer seq and changes nothing, instead of bringing removed tags back.
SEQ_TTL_MS = 7 * 24 * 60 * 60 * 1000


def customer_key(prefix: str, customer_id: str) -> str:
    """Hash of the customer's current tags: tag -> since (epoch ms, decimal string)."""
    return f"{prefix}customer:{customer_id}"


def tag_key(prefix: str, tag: str) -> str:
    """Sorted set of the customers holding `tag`, scored by since (epoch ms)."""
    return f"{prefix}tag:{tag}"


def seq_key(prefix: str, customer_id: str) -> str:
    """String holding the last change sequence applied for the customer."""
    return f"{prefix}seq:{customer_id}"


def rulebook_key(prefix: str) -> str:
    """Hash of tag (or rule id) -> JSON labels, plus `__version__`."""
    return f"{prefix}rulebook"


# KEYS[1] customer hash, KEYS[2] seq key.
# ARGV[1] key prefix, ARGV[2] customer id, ARGV[3] seq, ARGV[4] seq TTL in
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
