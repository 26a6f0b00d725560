"""``redis://`` and ``rediss://`` (TLS): a result backend with native expiry and push ``wait``.

Keys (prefix ``conveyor:`` by default)::

    conveyor:result:<id>   HASH  state, data; expires by Redis TTL (PX, ms)
    conveyor:done:<id>     LIST  one token pushed when a terminal state is stored: the record
                                 itself ("STATE\\nDATA") when under 64 KiB, else "1"; short TTL
    conveyor:join:<key>    SET   members of a join (chords, rate windows); expires by PX
    conveyor:entry:<key>   STRING an entry's value; expires by PX
    conveyor:entries       ZSET  every entry key at score 0, for prefix scans by ZRANGEBYLEX;
                                 members whose entry expired are dropped when a scan meets them
    conveyor:idx:all       ZSET  every task id, scored by the time of its last write (the
                                 server's clock, microseconds), for ``query``; and
    conveyor:idx:state:<s> ZSET  the same per state. The store script keeps both (two or
                                 three commands per write: the cost measured in bench/); about
                                 one terminal write in 16 with a ttl also trims members older
                                 than that ttl (expired, when every writer uses one
                                 ``result_expires``); a query drops the members whose record is
                                 gone when it meets them. Name, queue and worker filters are
                                 tested on the records a walk meets, not indexed.

The result hash also keeps the task's name, queue and worker in the clear for the filters, as
one field ``m`` holding a JSON array (one field rather than three: each hash field costs the
store script measurable time on the run path).

Why a token list rather than PUBLISH: a waiter reads the record, then blocks on the list. A
result stored between the two leaves its token behind, so the waiter returns at once; with
pub/sub that result would be missed unless the waiter subscribed first on a dedicated
connection. Waiters block with BLMOVE from the list to itself, so the token stays for every
other waiter of the same id (each one rotates it and Redis hands it to the next).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, ClassVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.backend import (
    BackendCapabilities,
    RecordPage,
    RecordQuery,
    ResultBackend,
    StoredRecord,
    decode_cursor,
    encode_cursor,
)
from conveyor.serialization import quote_json
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
# ARGV: ttl_ms (0: never expires), done_ttl_ms, then per record: state, data.
# With the query index (see the module doc) a written record is also (re)scored in the
# indexes: ARGV gains, after done_ttl_ms, the index key prefix and the length of the result
# key prefix, and per record a third value, the JSON array [name, queue, worker].
# Returns a list with 1 (written) or 0 per record.
_STORE_TEMPLATE = """
local terminal = {@TERMINAL@}
local ttl = tonumber(ARGV[1])
local done_ttl = tonumber(ARGV[2])
if ttl > 0 then done_ttl = math.min(done_ttl, ttl) end
@INDEX_SETUP@
local written = {}
for i = 1, #KEYS / 2 do
  local result, done = KEYS[2 * i - 1], KEYS[2 * i]
  local at = @FIRST@ + (i - 1) * @STRIDE@
  local state, data = ARGV[at], ARGV[at + 1]
  local current = redis.call('HGET', result, 'state')
  if current and (terminal[current] or state == 'PENDING') then
    written[i] = 0
  else
    @WRITE@
    if ttl > 0 then redis.call('PEXPIRE', result, ttl) else redis.call('PERSIST', result) end
    @INDEX_WRITE@
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
"""

_INDEX_SETUP = """
local idx = ARGV[3]
local skip = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = string.format('%d.%06d', clock[1], clock[2])
local cutoff = false
if ttl > 0 then cutoff = string.format('(%.6f', tonumber(now) - ttl / 1000) end
local function score(key, id, trim)
  redis.call('ZADD', key, now, id)
  if trim then redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff) end
end
"""

_INDEX_WRITE = """
    local id = string.sub(result, skip + 1)
    -- Trimming now and then bounds the indexes at a fraction of the cost of every time.
    local trim = cutoff and terminal[state] and tonumber(clock[2]) % 16 == 0
    score(idx .. 'all', id, trim)
    if current and current ~= state then redis.call('ZREM', idx .. 'state:' .. current, id) end
    score(idx .. 'state:' .. state, id, trim)
"""


def _store_script(*, indexed: bool) -> str:
    """The store script, with or without maintaining the query indexes."""
    parts = {
        "@TERMINAL@": ", ".join(f"[{s!r}] = true" for s in sorted(READY_STATES)),
        "@INLINE@": str(_INLINE_MAX),
        "@INDEX_SETUP@": _INDEX_SETUP if indexed else "",
        "@INDEX_WRITE@": _INDEX_WRITE if indexed else "",
        "@FIRST@": "5" if indexed else "3",
        "@STRIDE@": "3" if indexed else "2",
        "@WRITE@": ("redis.call('HSET', result, 'state', state, 'data', data, 'm', ARGV[at + 2])"
                    if indexed else "redis.call('HSET', result, 'state', state, 'data', data)"),
    }
    script = _STORE_TEMPLATE
    for marker, text in parts.items():
        script = script.replace(marker, text)
    return script


# One page of a query: walks one index newest first from a position, testing each live
# record against the filters; drops members whose record is gone. Bounded by a budget of
# members looked at, so one call never blocks the server for long.
# KEYS: the index; ARGV: result key prefix, max score ('+inf', '(t' or a cursor's score),
# cursor id ('' for none), min score, state, name, queue, worker, id prefix ('' for any),
# limit, budget. Returns {rows, score, id}: each row {id, state, data, [name, queue, worker]};
# score and id are where the next call starts ('' when the index is exhausted).
_QUERY = """
local zkey, rp, maxs, cid, mins = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = ARGV[5]
local want = {ARGV[6], ARGV[7], ARGV[8]}
local labelled = want[1] ~= '' or want[2] ~= '' or want[3] ~= ''
local prefix = ARGV[9]
local limit, budget = tonumber(ARGV[10]), tonumber(ARGV[11])
local out, seen, offset = {}, 0, 0
local last_score, last_id = maxs, cid
local at_cursor = cid ~= '' and tonumber(maxs)
while seen < budget do
  local batch = redis.call('ZREVRANGEBYSCORE', zkey, maxs, mins, 'WITHSCORES', 'LIMIT',
                           offset, 200)
  if #batch == 0 then return {out, '', ''} end
  local removed = 0
  for j = 1, #batch, 2 do
    local id, sc = batch[j], batch[j + 1]
    seen = seen + 1
    if not (at_cursor and tonumber(sc) == at_cursor and id >= cid) then
      last_score, last_id = sc, id
      if prefix == '' or string.sub(id, 1, #prefix) == prefix then
        local row = redis.call('HMGET', rp .. id, 'state', 'm', 'data')
        if not row[1] then
          redis.call('ZREM', zkey, id)
          removed = removed + 1
        elseif state == '' or row[1] == state then
          local ok = true
          if labelled then
            local ok_json, m = pcall(cjson.decode, row[2] or '[]')
            if not ok_json or type(m) ~= 'table' then m = {} end
            for f = 1, 3 do
              if want[f] ~= '' and m[f] ~= want[f] then ok = false end
            end
          end
          if ok then
            out[#out + 1] = {id, row[1], row[3], row[2] or '[]'}
            if #out >= limit then return {out, sc, id} end
          end
        end
      end
    end
  end
  offset = offset + #batch / 2 - removed
end
return {out, last_score, last_id}
"""

# The terminal records among some ids (the worker's pick-up check): reads each state, and
# the data only of terminal ones; one call instead of a pipeline of HMGETs costs the client a
# third of the CPU (bench/README.md, the pick-up section).
# KEYS: result keys. Returns a flat list: position (1-based), state, data per terminal one.
_FINISHED = """
local terminal = {@TERMINAL@}
local out = {}
for i = 1, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state and terminal[state] then
    out[#out + 1] = i
    out[#out + 1] = state
    out[#out + 1] = redis.call('HGET', KEYS[i], 'data') or ''
  end
end
return out
""".replace("@TERMINAL@", ", ".join(f"[{s!r}] = true" for s in sorted(READY_STATES)))

# Deletes a record and its wake token, and takes its id out of the query indexes.
# KEYS: result, done; ARGV: index key prefix, task id.
_FORGET = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('ZREM', ARGV[1] .. 'all', ARGV[2])
if state then redis.call('ZREM', ARGV[1] .. 'state:' .. state, ARGV[2]) end
return redis.call('DEL', KEYS[1], KEYS[2])
"""

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

def _without_query(url: URL, name: str) -> URL:
    """``url`` without the query parameter ``name`` (a conveyor option redis-py must not
    see)."""
    parts = urlsplit(url.raw)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return URL(urlunsplit(parts._replace(query=urlencode(kept))))


def _q(value: str | None) -> str:
    """A JSON literal for a label (cjson in the scripts reads it back)."""
    return "null" if value is None else quote_json(value)


def _labels(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(name, queue, worker) from a record's ``m`` field."""
    try:
        found = json.loads(raw)
    except ValueError:
        return None, None, None
    if not isinstance(found, list) or len(found) != 3:
        return None, None, None
    name, queue, worker = (v if isinstance(v, str) else None for v in found)
    return name, queue, worker


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

    Options: ``prefix`` (default ``"conveyor:"``); ``query_index`` (default off; also
    ``?query_index=1`` in the URL): maintain the sorted-set indexes behind :meth:`query`
    (the dashboard's task list) on every write. Off, ``capabilities.query`` is False. Every
    process writing records (workers, producers) must use the same setting, or the index
    misses their writes. Anything else goes to ``redis.Redis.from_url``.
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        native_expiry=True, push_wait=True, coordination=True, query=True)

    def __init__(self, url: URL, *, prefix: str = "conveyor:", query_index: bool = False,
                 **options: Any) -> None:
        super().__init__(url)
        flag = url.query.get("query_index")
        if flag is not None:
            query_index = flag.lower() in ("1", "true", "yes", "on")
            url = _without_query(url, "query_index")
        self._indexed = bool(query_index)
        if not self._indexed:
            # The index costs the write path measurably (bench/README.md): opt-in. The
            # contract suite reads capabilities on the instance.
            self.capabilities = replace(type(self).capabilities, query=False)  # type: ignore[misc]
        self._prefix = prefix
        self._result = f"{prefix}result:"
        self._done = f"{prefix}done:"
        self._errors = RedisErrors(url)
        self._client = make_client(url, **options)
        self._store = self._client.register_script(_store_script(indexed=self._indexed))
        self._join = self._client.register_script(_JOIN)
        self._entries = self._client.register_script(_ENTRIES)
        self._query = self._client.register_script(_QUERY)
        self._forget = self._client.register_script(_FORGET)
        self._finished = self._client.register_script(_FINISHED)
        self._index = f"{prefix}idx:"
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
            if self._indexed:
                args += (self._index, len(self._result))
            for record in batch[start:start + _STORE_CHUNK]:
                keys += (self._result + record.task_id, self._done + record.task_id)
                if self._indexed:
                    args += (record.state, record.data,
                             f"[{_q(record.name)},{_q(record.queue)},{_q(record.worker)}]")
                else:
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

    def finished_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """The terminal records among the ids in one script call per 500 (which reads the
        data of terminal records only). Each call is atomic, as every script is; nothing is
        sent for no ids."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, StoredRecord] = {}
        for start in range(0, len(ids), _STORE_CHUNK):
            chunk = ids[start:start + _STORE_CHUNK]
            with self._errors:
                flat = run_script(self._client, self._finished,
                                  [self._result + task_id for task_id in chunk], [])
            for at in range(0, len(flat), 3):
                task_id = chunk[int(flat[at]) - 1]
                found[task_id] = StoredRecord(task_id, flat[at + 1].decode(), bytes(flat[at + 2]))
        return found

    def forget(self, task_id: str) -> None:
        """Delete the record (and its wake token, and its index entries). Idempotent."""
        with self._errors:
            run_script(self._client, self._forget,
                       [self._result + task_id, self._done + task_id], [self._index, task_id])

    def query(self, query: RecordQuery) -> RecordPage:
        """(With ``query_index`` on.) Walks one sorted-set index newest first (the state's,
        else ``idx:all``) and tests the other filters on each record it meets,
        in script calls of at most 5,000 members each, for at most ~0.2 s per page: a page
        with a rare filter may come back short, with a cursor. An id prefix alone walks
        ``idx:all``; name, queue and worker filters are fast while their matches are common
        (a rare one walks far: the page comes back short, with a cursor)."""
        if not self._indexed:
            raise NotImplementedError("this Redis backend keeps no query index: add "
                                      "?query_index=1 to the backend URL of every writer")
        index = self._index + ("all" if query.state is None else "state:" + query.state)
        top = "+inf" if query.until is None else f"({float(query.until)!r}"
        at, after = top, ""
        if query.cursor is not None:
            cursor_at, after = decode_cursor(query.cursor)
            at = repr(cursor_at)
        low = "-inf" if query.since is None else repr(float(query.since))
        limit = max(int(query.limit), 1)
        rows: list[StoredRecord] = []
        deadline = time.monotonic() + 0.2
        while True:
            args = [self._result, at, after, low, query.state or "", query.name or "",
                    query.queue or "", query.worker or "", query.id_prefix or "",
                    limit - len(rows), 5000]
            with self._errors:
                found, at_next, after_next = run_script(self._client, self._query, [index], args)
            rows += (StoredRecord(i.decode(), s.decode(), bytes(d), *_labels(m))
                     for i, s, d, m in found)
            if not at_next:
                return RecordPage(rows, None)
            at, after = at_next.decode(), after_next.decode()
            if len(rows) >= limit or time.monotonic() > deadline:
                return RecordPage(rows, encode_cursor(float(at), after))

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
            if raw and b"\n" in raw:  # the record itself (see _STORE_TEMPLATE)
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
