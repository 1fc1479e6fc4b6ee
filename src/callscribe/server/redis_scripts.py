"""The scripts the Redis hub runs inside Redis, each one atomic (see redis_hub.py for the keys).

A kept message is written to the call's history and published with the id it got in one script,
so that pub/sub order is history order; a stream's end, a dead call's burial and a subscriber's
join read and write several keys that must agree.
"""

from __future__ import annotations

KEEP = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'k', ARGV[2], 'o', ARGV[3], 't', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', KEYS[2], ARGV[2] .. ARGV[3] .. id .. ' ' .. ARGV[4])
if ARGV[5] == '1' then redis.call('SET', KEYS[3], id .. ' ' .. ARGV[4], 'EX', ARGV[7]) end
return id
"""
"""A kept message: into the history, then published with its id. KEYS: history, channel, notice;
ARGV: cap, kind, origin, text, sticky ("1"), history TTL, notice TTL."""

END_STREAM = """
local left = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[2]) end
for _, owner in ipairs(redis.call('HKEYS', KEYS[1])) do
    local seen = redis.call('ZSCORE', KEYS[6], owner)
    if seen and tonumber(seen) >= tonumber(ARGV[5]) then return 1 end
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'k', 'e', 'o', ARGV[2], 't', ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[6])
redis.call('PUBLISH', KEYS[5], 'e' .. ARGV[2] .. id .. ' ' .. ARGV[3])
return 0
"""
"""A stream ended: if no live process streams the call any more, drop it and write its end.
KEYS: owners, calls, notice, history, channel, processes; ARGV: callSid, origin, end text, cap,
stale-before time, history TTL. Returns 1 while the call goes on elsewhere."""

BURY = """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not seen or tonumber(seen) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[3])
for i, kind in ipairs({'m', 'e'}) do
    local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'k', kind, 'o', ARGV[4], 't', ARGV[4 + i])
    redis.call('PUBLISH', KEYS[5], kind .. ARGV[4] .. id .. ' ' .. ARGV[4 + i])
end
redis.call('EXPIRE', KEYS[4], ARGV[7])
return 1
"""
"""A call whose processes died: its notice and its end (1011) into the history, if nobody did yet.
KEYS: owners, calls, notice, history, channel; ARGV: callSid, stale-before time, cap, origin
(`NO_ORIGIN`), notice, end text, history TTL."""

JOIN = """
local notice = redis.call('GET', KEYS[1]) or ''
local last, trimmed, first = '', '', ''
if redis.call('EXISTS', KEYS[2]) == 1 then
    local info, length, added = redis.call('XINFO', 'STREAM', KEYS[2]), 0, 0
    for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then last = info[i + 1] end
        if info[i] == 'length' then length = info[i + 1] end
        if info[i] == 'entries-added' then added = info[i + 1] end
        if info[i] == 'first-entry' and type(info[i + 1]) == 'table' then first = info[i + 1][1] end
    end
    if added > length then trimmed = '1' end
end
local vouched = redis.call('ZSCORE', KEYS[3], ARGV[1]) or ''
return {notice, last, trimmed, first, vouched}
"""
"""What a subscriber needs to join: the sticky notice, the history's last id, whether it was ever
trimmed, its first id, and when the call was last vouched for. KEYS: notice, history, calls."""
