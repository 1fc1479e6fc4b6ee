"""The scripts the Redis hub runs inside Redis, each one atomic (see redis_hub.py for the keys).

A kept message is written to the call's history and published with the id it got in one script,
so that pub/sub order is history order; a stream's end, a dead call's burial and a subscriber's
join read and write several keys that must agree.
"""

from __future__ import annotations

_ADD = """
local function add(history, cap, ...)
    local id = redis.call('XADD', history, '*', ...)
    local over = redis.call('XLEN', history) - tonumber(cap)
    if over > 0 then
        local gone = redis.call('XRANGE', history, '-', '+', 'COUNT', over)
        local last = gone[#gone][1]
        if over > 1 then redis.call('XTRIM', history, 'MINID', last) end
        redis.call('XDEL', history, last)
    end
    return id
end
"""
"""`add(history, cap, field, value, ...)`: an entry into a history, keeping its last `cap`; the
last entry trimmed goes by XDEL, which notes its id as the stream's max-deleted-entry-id (XADD's
and XTRIM's trimming do not), so that `JOIN` can tell what a resume misses. O(1) a call once the
history is full: one XLEN, XRANGE COUNT 1 and XDEL."""

KEEP = (
    _ADD
    + """
local id = add(KEYS[1], ARGV[1], 'k', ARGV[2], 'o', ARGV[3], 't', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', KEYS[2], ARGV[2] .. ARGV[3] .. id .. ' ' .. ARGV[4])
if ARGV[5] == '1' then redis.call('SET', KEYS[3], id .. ' ' .. ARGV[4], 'EX', ARGV[7]) end
return id
"""
)
"""A kept message: into the history, then published with its id. KEYS: history, channel, notice;
ARGV: cap, kind, origin, text, sticky ("1"), history TTL, notice TTL."""

END_STREAM = (
    _ADD
    + """
local left = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[2]) end
for _, owner in ipairs(redis.call('HKEYS', KEYS[1])) do
    local seen = redis.call('ZSCORE', KEYS[6], owner)
    if seen and tonumber(seen) >= tonumber(ARGV[5]) then return 1 end
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
local id = add(KEYS[4], ARGV[4], 'k', 'e', 'o', ARGV[2], 't', ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[6])
redis.call('PUBLISH', KEYS[5], 'e' .. ARGV[2] .. id .. ' ' .. ARGV[3])
return 0
"""
)
"""A stream ended: if no live process streams the call any more, drop it and write its end.
KEYS: owners, calls, notice, history, channel, processes; ARGV: callSid, origin, end text, cap,
stale-before time, history TTL. Returns 1 while the call goes on elsewhere."""

BURY = (
    _ADD
    + """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not seen or tonumber(seen) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[3])
for i, kind in ipairs({'m', 'e'}) do
    local id = add(KEYS[4], ARGV[3], 'k', kind, 'o', ARGV[4], 't', ARGV[4 + i])
    redis.call('PUBLISH', KEYS[5], kind .. ARGV[4] .. id .. ' ' .. ARGV[4 + i])
end
redis.call('EXPIRE', KEYS[4], ARGV[7])
return 1
"""
)
"""A call whose processes died: its notice and its end (1011) into the history, if nobody did yet.
KEYS: owners, calls, notice, history, channel; ARGV: callSid, stale-before time, cap, origin
(`NO_ORIGIN`), notice, end text, history TTL."""

JOIN = """
local notice = redis.call('GET', KEYS[1]) or ''
local last, missing, first = '', '', ''
if redis.call('EXISTS', KEYS[2]) == 1 then
    local info, length, added, deleted = redis.call('XINFO', 'STREAM', KEYS[2]), 0, 0, '0-0'
    for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then last = info[i + 1] end
        if info[i] == 'length' then length = info[i + 1] end
        if info[i] == 'entries-added' then added = info[i + 1] end
        if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
        if info[i] == 'first-entry' and type(info[i + 1]) == 'table' then first = info[i + 1][1] end
    end
    if added > length then missing = deleted ~= '0-0' and deleted or first end
end
local vouched = redis.call('ZSCORE', KEYS[3], ARGV[1]) or ''
return {notice, last, missing, first, vouched}
"""
"""What a subscriber needs to join: the sticky notice, the history's last id, the id a resume must
not be before to miss nothing ("" if nothing was trimmed: the last id trimmed, or the first kept
where an older version trimmed without noting it), the history's first id, and when the call was
last vouched for. KEYS: notice, history, calls."""
