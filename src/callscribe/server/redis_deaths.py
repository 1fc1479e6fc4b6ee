"""Calls whose processes died: noticed by the processes that follow them, and buried.

A call is vouched for in `{prefix}:calls` by the processes streaming it (redis_hub.py). One not
vouched for within the lease has lost its processes (killed, crashed, cut off): the first process
with subscribers of it to notice writes, in one script, an `Error` notice and the call's end (close
1011) to its history, and publishes them as from no process (`NO_ORIGIN`), so that every subscriber
anywhere -- the burying process's own included -- is told and closed, and a subscriber resuming
later reads the same end. The call leaves the registry.
"""

from __future__ import annotations

import json
import logging

from callscribe.core.fanout import end_text
from callscribe.server.hub import CLOSE_INTERNAL_ERROR, HISTORY, RESUME_WINDOW_S
from callscribe.server.redis_link import RedisLink
from callscribe.server.redis_scripts import BURY

log = logging.getLogger(__name__)

DEAD_REASON = "the call's server stopped answering"
NO_ORIGIN = "*" * 8
"""The origin of what is written for a dead call (no process's: everyone delivers it)."""


def dead_notice(call_sid: str) -> str:
    return json.dumps(
        {
            "type": "Error",
            "source": "callscribe",
            "callSid": call_sid,
            "message": f"{DEAD_REASON}: it stopped vouching for the call; transcription has ended",
        }
    )


async def bury_dead(link: RedisLink, call_sids: list[str], channel_prefix: str) -> None:
    """Bury those of `call_sids` whose processes stopped vouching for them (raises Redis's errors)."""
    stale_before = link.stale_before()
    with link.deadline():
        seen = await link.client.zmscore(link.key("calls"), call_sids)
        for call_sid, vouched in zip(call_sids, seen, strict=True):
            if vouched is None or vouched >= stale_before:
                continue  # ended normally (its end was published), or alive
            log.warning("call %s: %s; ending its subscribers with 1011", call_sid, DEAD_REASON)
            keys = [
                link.key("owners", call_sid),
                link.key("calls"),
                link.key("notice", call_sid),
                link.key("history", call_sid),
                channel_prefix + call_sid,
            ]
            dead = [dead_notice(call_sid), end_text(CLOSE_INTERNAL_ERROR, DEAD_REASON)]
            args: list[str | float] = [call_sid, stale_before, HISTORY, NO_ORIGIN, *dead, RESUME_WINDOW_S]
            await link.client.evalsha(link.script(BURY), keys, args)
