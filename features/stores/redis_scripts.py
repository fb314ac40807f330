"""Server-side write scripts: values, event times and TTL applied atomically by Redis.

Every script touches the keys of one entity group only (``KEYS`` share the
``{entity id}`` hash tag), so each runs on one node of a cluster.

**Hash: merged field by field.**  Each field has an event time, and a write
lands a value only when it is not older than the value held for that field.
The group-level ``_event_ms`` field holds the newest event time of any field
(what ``HMGET ... _event_ms`` answers, beside the values).  A field's own
time lives in ``_event_ms:<field>`` only when it differs from ``_event_ms``:
a group written whole, the common case, carries one hidden field, and a
partial write gives the fields it did not touch their own times.  A field
written by hand counts as written at the time featserve last recorded for it
(its own, else ``_event_ms``); a hash written by hand without ``_event_ms``
counts as older than any event, so the first featserve write replaces what
it names and leaves the other fields as they are.

**Many hashes in one call** (``HASH_WRITE_MANY``, for materialization): the
same merge, key after key, so one call carries hundreds of entities.  Its
keys need not share a slot, only a node: they are passed as arguments, not
``KEYS`` (which a cluster node requires in one slot), and the
``allow-cross-slot-keys`` flag lets the script touch them; the caller groups
them by the node that serves them.  A key's error answers that key alone
(a data error, or a key the node does not serve); the other keys are written.
When one ``EXISTS`` of the call's keys finds none held (a first load), no
key is read before it is written, and a key with every value at one time is
one ``HSET`` and one ``PEXPIREAT``: a quarter less of Redis CPU per entity
than reading each key and building its fields in Lua.

**String (an embedding)**: the blob and a sibling ``<key>:_event_ms`` key;
an older write is skipped.  **Sorted set**: members are scored by event time
in seconds; ``ZADD GT`` never lowers a score and the newest ``top_n`` are
kept, so no mark is needed.

**TTL from the event time**: ``PEXPIREAT`` the newest event time held plus
the group's TTL (hash: the newest field; sorted set: the newest member), so
a value 1.5 h old in a 2 h group has 0.5 h left.

Every script answers what landed, as a string of one character per field or
member (``1`` landed, ``0`` a newer value held), and refuses data it cannot
merge with an error reply whose first word is in ``DATA_ERRORS``: a key of
another type, or a held event time that is not a number.  Scripts are sent
with ``EVALSHA`` by the SHA-1 computed here; a node that answers
``NOSCRIPT`` gets the same call as ``EVAL``, which caches the script on
that node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "DATA_ERRORS",
    "EVENT_MS_FIELD",
    "FIELD_EVENT_MS_PREFIX",
    "HASH_WRITE",
    "HASH_WRITE_MANY",
    "SORTED_SET_WRITE",
    "STRING_WRITE",
    "Script",
]

EVENT_MS_FIELD = "_event_ms"
"""The hash field (and the blob sibling key suffix) holding the newest event time held."""

FIELD_EVENT_MS_PREFIX = "_event_ms:"
"""Prefix of a hash field holding one field's event time, when it differs from ``_event_ms``."""

DATA_ERRORS = ("WRONGTYPE", "BADEVENTTIME")
"""First words of the error replies that refuse one write for its data: retrying cannot help."""


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA-1."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


_COMMON = """
local function wrong_type(key, expected)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= expected and kind ~= 'none' then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a ' .. expected
  end
end
-- A read of key that a key of another type refuses; the TYPE lookup only then.
local function read(command, key, expected, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply['err'] then
    return nil, wrong_type(key, expected) or reply['err']
  end
  return reply
end
local function event_time(text)
  local number = tonumber(text)
  if number == nil or number ~= number or number == math.huge or number == -math.huge then
    return nil
  end
  return number
end
local function bad_time(key, name, text)
  return 'BADEVENTTIME ' .. key .. ' holds ' .. name .. ' = ' .. string.sub(text, 1, 40)
    .. ', not epoch milliseconds'
end
local function ms(number)
  return string.format('%.0f', number)
end
-- unpack() has a bound on its arguments: send long argument lists in slices.
local function in_slices(command, key, items)
  for first = 1, #items, 200 do
    redis.call(command, key, unpack(items, first, math.min(first + 199, #items)))
  end
end
"""

HASH_WRITE = Script(
    _COMMON
    + f"""
-- KEYS[1]: the hash.  ARGV[1]: the group's TTL ms, ARGV[2]: the update's event ms, ARGV[3]: n;
-- then n field, event ms pairs for the values at another time; then field, value pairs.
-- Returns one character per field, value pair: 1 where the value landed, 0 where a newer
-- one is held.
local key = KEYS[1]
local held, problem = read('HGETALL', key, 'hash')
if problem then return redis.error_reply(problem) end
local MARK, PREFIX = '{EVENT_MS_FIELD}', '{FIELD_EVENT_MS_PREFIX}'
local group_ms, own, present, names = 0, {{}}, {{}}, {{}}
for i = 1, #held, 2 do
  local name, value = held[i], held[i + 1]
  if name == MARK or string.sub(name, 1, #PREFIX) == PREFIX then
    local at = event_time(value)
    if at == nil then return redis.error_reply(bad_time(key, name, value)) end
    if name == MARK then group_ms = at else own[string.sub(name, #PREFIX + 1)] = at end
  elseif string.sub(name, 1, 1) ~= '_' then
    present[name] = true
    names[#names + 1] = name
  end
end
local update_ms, at_of = tonumber(ARGV[2]), {{}}
local first = 4 + 2 * tonumber(ARGV[3])
for i = 4, first - 1, 2 do at_of[ARGV[i]] = tonumber(ARGV[i + 1]) end
local flags, landed, values = {{}}, {{}}, {{}}
local newest = group_ms
for i = first, #ARGV, 2 do
  local name = ARGV[i]
  local at, held_at = at_of[name] or update_ms, -1
  if present[name] then held_at = own[name] or group_ms end
  if at >= held_at then
    flags[#flags + 1] = '1'
    if not present[name] then names[#names + 1] = name end
    landed[name] = at
    values[#values + 1] = name
    values[#values + 1] = ARGV[i + 1]
    if at > newest then newest = at end
  else
    flags[#flags + 1] = '0'
  end
end
if #values == 0 then return table.concat(flags) end
values[#values + 1] = MARK
values[#values + 1] = ms(newest)
local cleared = {{}}
for _, name in ipairs(names) do
  local at = landed[name] or own[name] or group_ms
  if at ~= newest then
    values[#values + 1] = PREFIX .. name
    values[#values + 1] = ms(at)
  elseif own[name] then
    cleared[#cleared + 1] = PREFIX .. name
  end
end
in_slices('HSET', key, values)
in_slices('HDEL', key, cleared)
redis.call('PEXPIREAT', key, ms(newest + tonumber(ARGV[1])))
return table.concat(flags)
"""
)

STRING_WRITE = Script(
    _COMMON
    + """
-- KEYS[1]: the blob, KEYS[2]: its event-time key.  ARGV: event ms, expiry ms, the blob.
-- Returns '1' when written, '0' when a newer event is held.
local problem = wrong_type(KEYS[1], 'string')
if problem then return redis.error_reply(problem) end
local held, problem = read('GET', KEYS[2], 'string')
if problem then return redis.error_reply(problem) end
if held then
  local held_at = event_time(held)
  if held_at == nil then return redis.error_reply(bad_time(KEYS[2], 'its value', held)) end
  if held_at > tonumber(ARGV[1]) then return '0' end
end
redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PXAT', ARGV[2])
return '1'
"""
)

SORTED_SET_WRITE = Script(
    _COMMON
    + """
-- KEYS[1]: the sorted set.  ARGV[1]: the group's TTL ms, ARGV[2]: members to keep, then
-- score, member pairs (no more than are kept: the caller trims).
-- Returns one character per member: 1 where it is held at its score after the write, 0 where
-- a higher score is held for it or newer members pushed it out.
local key = KEYS[1]
local problem = wrong_type(key, 'zset')
if problem then return redis.error_reply(problem) end
local pairs_, members = {}, {}
for i = 3, #ARGV, 2 do
  pairs_[#pairs_ + 1] = ARGV[i]
  pairs_[#pairs_ + 1] = ARGV[i + 1]
  members[#members + 1] = ARGV[i + 1]
end
for first = 1, #pairs_, 200 do
  redis.call('ZADD', key, 'GT', unpack(pairs_, first, math.min(first + 199, #pairs_)))
end
redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(ARGV[2]) - 1)
local newest = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
local newest_ms = math.floor(tonumber(newest[2]) * 1000 + 0.5)
redis.call('PEXPIREAT', key, ms(newest_ms + tonumber(ARGV[1])))
local flags = {}
for first = 1, #members, 200 do
  local last = math.min(first + 199, #members)
  local scores = redis.call('ZMSCORE', key, unpack(members, first, last))
  for i = first, last do
    local score = scores[i - first + 1]
    if score and tonumber(score) == tonumber(ARGV[2 * i + 1]) then
      flags[#flags + 1] = '1'
    else
      flags[#flags + 1] = '0'
    end
  end
end
return table.concat(flags)
"""
)

_HASH_MERGE = f"""
local MARK, PREFIX = '{EVENT_MS_FIELD}', '{FIELD_EVENT_MS_PREFIX}'
-- One hash's update: field j's value is ARGV[base + j] ('' where the update has none), at
-- uniform when that is set, else at ats[j].

-- Write a hash where none is held: every value lands; the same fields as merge_held writes.
local function write_new(key, ttl, names, base, uniform, ats)
  local written, count, newest, complete = {{}}, 0, 0, true
  for j = 1, #names do
    local value = ARGV[base + j]
    if value ~= '' then
      written[count + 1] = names[j]
      written[count + 2] = value
      count = count + 2
      local at = uniform or ats[j]
      if at > newest then newest = at end
    else
      complete = false
    end
  end
  if count == 0 then return string.rep('-', #names) end
  written[count + 1] = MARK
  written[count + 2] = ms(newest)
  if not uniform then
    for j = 1, #names do
      if ARGV[base + j] ~= '' and ats[j] ~= newest then
        written[#written + 1] = PREFIX .. names[j]
        written[#written + 1] = ms(ats[j])
      end
    end
  end
  in_slices('HSET', key, written)
  redis.call('PEXPIREAT', key, ms(newest + ttl))
  if complete then return string.rep('1', #names) end
  local flags = {{}}
  for j = 1, #names do
    if ARGV[base + j] ~= '' then flags[j] = '1' else flags[j] = '-' end
  end
  return table.concat(flags)
end

-- Why HGETALL failed: nil and the data error, or nil, nil and any other error.
local function refusal(key, failed)
  -- A key of another node's slot (a slot moved) fails TYPE as well: not a data error.
  local kind = redis.pcall('TYPE', key)
  if kind['err'] then return nil, nil, kind['err'] end
  if kind['ok'] ~= 'hash' and kind['ok'] ~= 'none' then
    return nil, 'WRONGTYPE ' .. key .. ' holds a ' .. kind['ok'] .. ', not a hash'
  end
  return nil, nil, failed['err']
end

-- Merge one hash into held (its HGETALL reply, not empty).  Returns one character per name
-- ('1' landed, '0' a newer value held, '-' not in the update), or nil and the data error.
local function merge_held(key, held, ttl, names, base, uniform, ats)
  local group_ms, own, present, order = 0, {{}}, {{}}, {{}}
  for i = 1, #held, 2 do
    local name, value = held[i], held[i + 1]
    if name == MARK or string.sub(name, 1, #PREFIX) == PREFIX then
      local at = event_time(value)
      if at == nil then return nil, bad_time(key, name, value) end
      if name == MARK then group_ms = at else own[string.sub(name, #PREFIX + 1)] = at end
    elseif string.sub(name, 1, 1) ~= '_' then
      present[name] = true
      order[#order + 1] = name
    end
  end
  local flags, landed, written = {{}}, {{}}, {{}}
  local newest = group_ms
  for j = 1, #names do
    local name, value = names[j], ARGV[base + j]
    if value == '' then
      flags[j] = '-'
    else
      local at, held_at = uniform or ats[j], -1
      if present[name] then held_at = own[name] or group_ms end
      if at >= held_at then
        flags[j] = '1'
        if not present[name] then order[#order + 1] = name end
        landed[name] = at
        written[#written + 1] = name
        written[#written + 1] = value
        if at > newest then newest = at end
      else
        flags[j] = '0'
      end
    end
  end
  if #written == 0 then return table.concat(flags) end
  written[#written + 1] = MARK
  written[#written + 1] = ms(newest)
  local cleared = {{}}
  for _, name in ipairs(order) do
    local at = landed[name] or own[name] or group_ms
    if at ~= newest then
      written[#written + 1] = PREFIX .. name
      written[#written + 1] = ms(at)
    elseif own[name] then
      cleared[#cleared + 1] = PREFIX .. name
    end
  end
  in_slices('HSET', key, written)
  if #cleared > 0 then in_slices('HDEL', key, cleared) end
  redis.call('PEXPIREAT', key, ms(newest + ttl))
  return table.concat(flags)
end
"""

HASH_WRITE_MANY = Script(
    "#!lua flags=allow-cross-slot-keys\n"
    + _COMMON
    + _HASH_MERGE
    + """
-- No KEYS: the keys are arguments, so that one call names keys of many slots of one node.
-- ARGV[1]: the group's TTL ms, ARGV[2]: n, ARGV[3]: k; ARGV[4..3+n]: the field names, then the
-- k keys; then per key: its event times (one integer for all its values, or n integers joined
-- by commas, one per field; in decimal, as ms() writes them) and n values ('' where the update
-- has none).
-- Returns an array: first the k keys' flags (see merge_held) in one string of k * n characters
-- ('-' for a key with an error), then, per key with an error, its position (1-based) and '!'
-- and its data error, or '~' and any other error (say, a key this node does not serve).
local ttl, n, k = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local names, row = {}, {}
for j = 1, n do
  names[j] = ARGV[3 + j]
  row[2 * j - 1] = ARGV[3 + j]
end
row[2 * n + 1] = MARK
-- A new hash with every value at one time, the bulk of a first load, is one HSET of row (its
-- values filled in) and one PEXPIREAT; unpack() takes row whole below 200 arguments.
local short = 2 * n + 2 <= 200
local all_landed, none = string.rep('1', n), string.rep('-', n)
-- Keys of a first load are not held yet: one EXISTS of them all spares a read per key.  (A
-- cluster node refuses EXISTS of keys in several slots: then each key is read.)
local some_held = true
if k > 0 and 3 + n + k <= 7000 then
  local held_keys = redis.pcall('EXISTS', unpack(ARGV, 4 + n, 3 + n + k))
  some_held = type(held_keys) ~= 'number' or held_keys > 0
end
local flags, problems = {}, {}
for i = 1, k do
  local key, base = ARGV[3 + n + i], 4 + n + k + (i - 1) * (n + 1)
  local spec = ARGV[base]
  local uniform, ats = nil, nil
  if string.find(spec, ',', 1, true) then
    ats = {}
    for part in string.gmatch(spec, '[^,]+') do ats[#ats + 1] = tonumber(part) end
  else
    uniform = tonumber(spec)
  end
  local held = {}
  if some_held then held = redis.pcall('HGETALL', key) end
  local landed, problem, failure
  if type(held) == 'table' and held['err'] then
    landed, problem, failure = refusal(key, held)
  elseif #held > 0 then
    landed, problem = merge_held(key, held, ttl, names, base, uniform, ats)
  elseif uniform and short then
    local complete = true
    for j = 1, n do
      local value = ARGV[base + j]
      if value == '' then
        complete = false
        break
      end
      row[2 * j] = value
    end
    if complete then
      row[2 * n + 2] = spec
      redis.call('HSET', key, unpack(row))
      redis.call('PEXPIREAT', key, ms(uniform + ttl))
      landed = all_landed
    else
      landed = write_new(key, ttl, names, base, uniform, ats)
    end
  else
    landed = write_new(key, ttl, names, base, uniform, ats)
  end
  if landed then
    flags[i] = landed
  else
    flags[i] = none
    problems[#problems + 1] = i
    if problem then
      problems[#problems + 1] = '!' .. problem
    else
      problems[#problems + 1] = '~' .. failure
    end
  end
end
local reply = {table.concat(flags)}
for _, item in ipairs(problems) do reply[#reply + 1] = item end
return reply
"""
)
