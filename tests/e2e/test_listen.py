"""`callscribe listen` end to end, as a process against a real server: what it prints, with and
without `--json`, following one call, the only call, or all of them, and its exit status."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import trio

from callscribe.core import audio
from callscribe.testing.call_plan import CallSpec
from callscribe.testing.call_runner import run_call
from callscribe.testing.fake_deepgram import FakeDeepgram
from conftest import RunningServer, free_port, start_server, wait_until_live


@dataclass
class Listener:
    """A `callscribe listen` process and everything it wrote."""

    process: trio.Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def lines(self) -> list[str]:
        return self.stdout.decode().splitlines()

    @property
    def errors(self) -> list[str]:
        return self.stderr.decode().splitlines()

    async def status(self) -> int:
        with trio.fail_after(20):
            await self.done.wait()
            return await self.process.wait()

    async def wait_for(self, text: str) -> None:
        with trio.fail_after(20):
            while text not in (self.stdout + self.stderr).decode():
                await trio.sleep(0.02)


async def listen(nursery: trio.Nursery, *args: str) -> Listener:
    env = {k: v for k, v in os.environ.items() if k not in ("CALLSCRIBE_TOKEN", "NO_COLOR")}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "callscribe", "listen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    listener = Listener(process)

    async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await stream.receive_some(65536):
            into += chunk

    async def read_both() -> None:
        assert process.stdout is not None and process.stderr is not None
        async with trio.open_nursery() as readers:
            readers.start_soon(drain, process.stdout, listener.stdout)
            readers.start_soon(drain, process.stderr, listener.stderr)
        listener.done.set()

    nursery.start_soon(read_both)
    return listener


def call(call_sid: str, seconds: float = 2.0) -> CallSpec:
    return CallSpec(
        inbound=audio.generate_tone(seconds), outbound=audio.generate_tone(seconds, 660.0), call_sid=call_sid
    )


async def test_one_call_from_before_it_starts_to_its_end(server: RunningServer) -> None:
    async with trio.open_nursery() as nursery:
        listener = await listen(nursery, "CAfirst", "--url", server.ws_url)
        await listener.wait_for("-- call CAfirst (waiting up to 600 s for it to start)")
        report = await run_call(server.url("/twilio"), call("CAfirst"), speed=2)
        assert await listener.status() == 0
    assert report.close_code == 1000
    assert listener.lines == [
        "-- call CAfirst (waiting up to 600 s for it to start)",
        "00:00  Caller       audio 0.00 to 1.00",
        "00:00  Other party  audio 0.00 to 1.00",
        "00:01  Caller       audio 1.00 to 2.00",
        "00:01  Other party  audio 1.00 to 2.00",
        "-- call ended (1000 call ended)",
    ]
    assert listener.errors == []


async def test_json_is_the_messages_themselves_one_a_line(server: RunningServer) -> None:
    async with trio.open_nursery() as nursery:
        listener = await listen(nursery, "--json", "CAjson", "--url", server.ws_url)
        await listener.wait_for("callscribe listen: call CAjson")
        await run_call(server.url("/twilio"), call("CAjson"), speed=2)
        assert await listener.status() == 0
    messages = [json.loads(line) for line in listener.lines]
    # A final per channel per second, then CloseStream's empty final per channel (nothing was pending).
    assert [m["type"] for m in messages] == ["Results"] * 6 + ["Metadata"]
    assert [m["duration"] for m in messages[4:6]] == [0, 0]
    assert listener.errors[-1] == "callscribe listen: call CAjson: closed: 1000 call ended"


async def test_all_follows_every_call_until_ctrl_c(server: RunningServer) -> None:
    async with trio.open_nursery() as nursery:
        listener = await listen(nursery, "--all", "--json", "--url", server.ws_url)
        await listener.wait_for("following every live call")
        async with trio.open_nursery() as calls:
            calls.start_soon(functools.partial(run_call, server.url("/twilio"), call("CAone"), speed=2))
            calls.start_soon(functools.partial(run_call, server.url("/twilio"), call("CAtwo"), speed=2))
        await listener.wait_for("call CAtwo: closed: 1000 call ended")
        await listener.wait_for("call CAone: closed: 1000 call ended")
        listener.process.send_signal(signal.SIGINT)
        assert await listener.status() == 0
    messages = [json.loads(line) for line in listener.lines]
    assert {m["callSid"] for m in messages} == {"CAone", "CAtwo"}  # each tagged with its call
    for sid in ("CAone", "CAtwo"):
        assert [m["type"] for m in messages if m["callSid"] == sid][-1] == "Metadata"


async def test_no_callsid_follows_the_only_call_or_the_next_to_start(server: RunningServer) -> None:
    async with trio.open_nursery() as nursery:
        listener = await listen(nursery, "--url", server.ws_url)
        await listener.wait_for("no live call yet; waiting for one to start")
        await run_call(server.url("/twilio"), call("CAnext"), speed=2)
        assert await listener.status() == 0
    assert listener.lines[1] == "-- call CAnext"
    assert listener.lines[-1] == "-- call ended (1000 call ended)"


async def test_several_live_calls_and_no_choice_is_bad_usage(server: RunningServer) -> None:
    async with trio.open_nursery() as nursery:
        for sid in ("CAa", "CAb"):  # calls that outlast the listener's start on any machine
            nursery.start_soon(run_call, server.url("/twilio"), call(sid, 60.0))
        for sid in ("CAa", "CAb"):
            await wait_until_live(server, sid)
        listener = await listen(nursery, "--url", server.ws_url)
        status = await listener.status()
        nursery.cancel_scope.cancel()  # the calls are not needed any more
    assert status == 2
    (line,) = listener.errors
    assert re.fullmatch(
        r"callscribe listen: 2 live calls \(CA[ab], CA[ab]\): name one \(callscribe listen CALLSID\) "
        r"or follow them all \(--all\)",
        line,
    )


async def test_a_call_that_does_not_start_in_time_ends_with_the_servers_error(server: RunningServer) -> None:
    async with trio.open_nursery() as nursery:
        listener = await listen(nursery, "CAnever", "--wait", "0.5", "--url", server.ws_url)
        assert await listener.status() == 1
    assert listener.lines[1:] == [
        "!! Error: call 'CAnever' did not start within 0.5 s",
        "-- closed: 1008 unknown callSid",
    ]


async def test_a_server_that_asks_for_a_token(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, tokens=frozenset({"s3cret"}))
    async with trio.open_nursery() as inner:
        refused = await listen(inner, "CAx", "--url", server.ws_url)
        admitted = await listen(inner, "CAx", "--wait", "0.2", "--token", "s3cret", "--url", server.ws_url)
        assert await refused.status() == 1 and await admitted.status() == 1
    assert len(refused.errors) == 1, refused.errors
    (line,) = refused.errors
    assert line.startswith(f"callscribe listen: {server.ws_url}/client refused the subscriber: HTTP 401")
    assert admitted.lines[-1] == "-- closed: 1008 unknown callSid"  # it got in: the call is what is missing
    server.stop.set()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--url", "ws://127.0.0.1:{port}"], 1, "cannot connect to ws://127.0.0.1:{port}/client: "),
        (["--all", "CA1"], 2, "name a call or use --all, not both"),
        (["--url", "ftp://example.com"], 2, "--url must be ws://host:port or wss://host:port"),
        (["--url", "ws://127.0.0.1:1", "--ca-file", "/no/such.pem"], 2, "cannot load --ca-file /no/such.pem"),
    ],
)
async def test_failures_are_one_line(args: list[str], status: int, message: str) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        listener = await listen(nursery, *(arg.format(port=port) for arg in args))
        assert await listener.status() == status
    (line,) = listener.errors
    assert line.startswith("callscribe listen: " + message.format(port=port)), line
    assert listener.lines == []
