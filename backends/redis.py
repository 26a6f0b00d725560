"""``redis://`` and ``rediss://`` (TLS): a result backend with native expiry and push ``wait``.

Keys (prefix ``conveyor:`` by default)::

    conveyor:result:<id>   HASH  state, data; expires by Redis TTL (PX, ms)
    conveyor:done:<id>     LIST  one token pushed when a terminal state is stored: the record
                                 itself ("STATE\\nDATA") when under 64 KiB, else "1"; short TTL
    conveyor:join:<key>    SET   members of a join (chords, rate windows); expires by PX
    conveyor:entry:<key>   STRING an entry's value; expires by PX
    conveyor:entries       ZSET  every entry key at score 0, for prefix scans by ZRANGEBYLEX;
                                 members whose entry expired are dropped when a scan meets them

Why a token list rather than PUBLISH: a waiter reads the record, then blocks on the list. A
result stored between the two leaves its token behind, so the waiter returns at once; with
pub/sub that result would be missed unless the waiter subscribed first on a dedicated
connection. Waiters block with BLMOVE from the list to itself, so the token stays for every
other waiter of the same id (each one rotates it and Redis hands it to the next).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar, cast

from conveyor.backend import BackendCapabilities, ResultBackend, StoredRecord
from conveyor.states import READY_STATES
from conveyor.stores.redis import (
    RedisErrors,
    block_timeout,
    make_client,
    run_script,
    server_info,
)
from conveyor.url import URL

#: Largest record data (bytes) a "done" token carries itself.
_INLINE_MAX = 65536

# Stores one or more records, each atomically with these rules: nothing replaces a terminal
# record (first terminal write wins), and PENDING replaces nothing (it must not hide a
# worker's progress). A terminal write leaves a "done" token that wakes waiters.
# KEYS: result_1, done_1, result_2, done_2, ...
# ARGV: ttl_ms (0: never expires), done_ttl_ms, state_1, data_1, state_2, data_2, ...
# Returns a list with 1 (written) or 0 per record.
_STORE = """
local terminal = {@TERMINAL@}
local ttl = tonumber(ARGV[1])
local done_ttl = tonumber(ARGV[2])
if ttl > 0 then done_ttl = math.min(done_ttl, ttl) end
local written = {}
for i = 1, #KEYS / 2 do
  local result, done = KEYS[2 * i - 1], KEYS[2 * i]
  local state, data = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local current = redis.call('HGET', result, 'state')
  if current and (terminal[current] or state == 'PENDING') then
    written[i] = 0
  else
    redis.call('HSET', result, 'state', state, 'data', data)
    if ttl > 0 then redis.call('PEXPIRE', result, ttl) else redis.call('PERSIST', result) end
    if terminal[state] then
      -- The token carries the record itself when small, so a woken waiter needs no second
      -- read. It never outlives the record: a token without one would make waiters spin.
      redis.call('DEL', done)
      if #data <= @INLINE@ then
        redis.call('RPUSH', done, state .. '\\n' .. data)
      else
        redis.call('RPUSH', done, '1')
      end
      redis.call('PEXPIRE', done, done_ttl)
    end
    written[i] = 1
  end
end
return written
""".replace("@INLINE@", str(_INLINE_MAX)).replace(
    "@TERMINAL@", ", ".join(f"[{s!r}] = true" for s in sorted(READY_STATES)))

# Adds a member and counts in one atomic step; an expired set is simply gone.
# KEYS: join key; ARGV: member, ttl_ms (0: never expires). Returns the set's size.
_JOIN = """
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return redis.call('SCARD', KEYS[1])
"""

# Every entry whose key starts with a prefix, with its value, in one atomic step.
# KEYS: index zset; ARGV: value key prefix, lex range start, lex range end.
# Returns a flat list key_1, value_1, key_2, value_2, ...
_ENTRIES = """
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3])
local found = {}
for _, name in ipairs(names) do
  local value = redis.call('GET', ARGV[1] .. name)
  if value then
    found[#found + 1] = name
    found[#found + 1] = value
  else
    redis.call('ZREM', KEYS[1], name)
  end
end
return found
"""

#: Records per script call in store_many (a script blocks the server while it runs).
_STORE_CHUNK = 500
#: How long a "done" token outlives the store; a waiter only needs it for the instant between
#: its read and its blocking call.
_DONE_TTL_MS = 60_000
#: The longest single block in ``wait``; after it the record is read again, so a waiter can
#: never hang on a token that expired before it blocked.
_MAX_BLOCK = 5.0


class RedisResultBackend(ResultBackend):
    """Results in Redis hashes with TTL. Thread-safe; each call is one round trip.

    Options: ``prefix`` (default ``"conveyor:"``); anything else goes to
    ``redis.Redis.from_url``.
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        native_expiry=True, push_wait=True, coordination=True)

    def __init__(self, url: URL, *, prefix: str = "conveyor:", **options: Any) -> None:
        super().__init__(url)
        self._prefix = prefix
        self._result = f"{prefix}result:"
        self._done = f"{prefix}done:"
        self._errors = RedisErrors(url)
        self._client = make_client(url, **options)
        self._store = self._client.register_script(_STORE)
        self._join = self._client.register_script(_JOIN)
        self._entries = self._client.register_script(_ENTRIES)
        self._entry = f"{prefix}entry:"
        self._entry_index = f"{prefix}entries"

    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """Write atomically in one script call; False (nothing written) when the id already
        has a terminal record, or when writing PENDING over any record. A terminal write wakes
        every ``wait`` on the id."""
        return self.store_many([record], ttl=ttl)[0]

    def store_many(self, records: Iterable[StoredRecord], *, ttl: float | None) -> list[bool]:
        """Store records with one script call per 500 (each record atomic on its own, with
        :meth:`store`'s rules)."""
        batch = list(records)
        ttl_ms = 0 if ttl is None else max(round(ttl * 1000), 1)
        written: list[bool] = []
        for start in range(0, len(batch), _STORE_CHUNK):
            keys: list[str] = []
            args: list[Any] = [ttl_ms, _DONE_TTL_MS]
            for record in batch[start:start + _STORE_CHUNK]:
                keys += (self._result + record.task_id, self._done + record.task_id)
                args += (record.state, record.data)
            with self._errors:
                written += (bool(w) for w in run_script(self._client, self._store, keys, args))
        return written

    def get(self, task_id: str) -> StoredRecord | None:
        """The record, or None when missing or expired (Redis drops it at its TTL)."""
        with self._errors:
            row = self._client.hmget(self._result + task_id, ("state", "data"))
        state, data = cast("list[bytes | None]", row)
        if state is None:
            return None
        return StoredRecord(task_id, state.decode(), data or b"")

    def get_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """Records of several ids in one pipelined round trip."""
        ids = list(task_ids)
        if not ids:
            return {}
        with self._errors:
            pipe = self._client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hmget(self._result + task_id, ("state", "data"))
            rows = pipe.execute()
        return {task_id: StoredRecord(task_id, state.decode(), data or b"")
                for task_id, (state, data) in zip(ids, rows, strict=True) if state is not None}

    def forget(self, task_id: str) -> None:
        """Delete the record (and its wake token). Idempotent."""
        with self._errors:
            self._client.delete(self._result + task_id, self._done + task_id)

    def wait(self, task_id: str, *, timeout: float | None) -> StoredRecord | None:
        """Block until the record is terminal (woken by the store itself, not by polling);
        None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._done + task_id
        while True:
            record = self.get(task_id)
            if record is not None and record.ready:
                return record
            block = _MAX_BLOCK
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                block = min(block, left)
            # redis-py annotates the timeout as int; the server takes fractional seconds.
            seconds: Any = block_timeout(self._client, block)
            with self._errors:
                token = self._client.blmove(done, done, seconds, "LEFT", "LEFT")
            raw = cast("bytes | None", token)  # the client returns bytes, never str
            if raw and b"\n" in raw:  # the record itself (see _STORE)
                state, _, data = raw.partition(b"\n")
                return StoredRecord(task_id, state.decode(), data)

    def info(self) -> dict[str, str]:
        """The server's name and version, and the key prefix."""
        return server_info(self._client, self._errors) | {"prefix": self._prefix}

    def purge_expired(self) -> int:
        """Nothing to do: Redis expires records itself. Returns 0."""
        return 0

    # -- coordination -----------------------------------------------------------------------
    def join(self, key: str, member: str, *, ttl: float | None) -> int:
        """SADD + expiry + SCARD in one script: atomic, one round trip."""
        ttl_ms = 0 if ttl is None else max(round(ttl * 1000), 1)
        with self._errors:
            count = run_script(self._client, self._join, [f"{self._prefix}join:{key}"],
                               [member, ttl_ms])
        return int(count)

    def put_entry(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """SET with PX and an index entry, in one MULTI (atomic)."""
        with self._errors:
            pipe = self._client.pipeline(transaction=True)
            if ttl is None:
                pipe.set(self._entry + key, value)
            else:
                pipe.set(self._entry + key, value, px=max(round(ttl * 1000), 1))
            pipe.zadd(self._entry_index, {key: 0})
            pipe.execute()

    def entries(self, prefix: str) -> dict[str, bytes]:
        """One script call: a lexicographic range of the index (so the prefix is literal),
        then the values; expired ones are dropped from the index on the way."""
        # 0xFF never occurs in UTF-8, so "[prefix" .. "[prefix\xff" is exactly the prefix.
        start = b"[" + prefix.encode()
        with self._errors:
            flat = run_script(self._client, self._entries, [self._entry_index],
                              [self._entry, start, start + b"\xff"])
        return {flat[i].decode(): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}

    def delete_entry(self, key: str) -> None:
        """DEL and ZREM in one MULTI. Idempotent."""
        with self._errors:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._entry + key)
            pipe.zrem(self._entry_index, key)
            pipe.execute()

    def ping(self) -> None:
        """Send PING; raises :class:`~conveyor.exceptions.ConnectionLostError` when down."""
        with self._errors:
            self._client.ping()

    def close(self) -> None:
        """Close the pool's connections. Idempotent."""
        with self._errors:
            self._client.close()
