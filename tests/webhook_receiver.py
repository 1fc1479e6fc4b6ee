"""A webhook receiver for the tests: an HTTP/1.1 server on loopback (h11) that records what is POSTed
to it and can fail the first deliveries or answer slowly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Receiver:
    fail_first: int = 0
    """Answer 500 to this many requests, then 200."""
    delay_s: float = 0.0
    endless_reply: bool = False
    """Answer 200 with a body that never ends: a chunk every 50 ms, for as long as it is read."""
    trickled_reply: bool = False
    """Answer 200 with headers that never end: a byte every 100 ms (each read comes well in time)."""
    deliveries: list[Delivery] = field(default_factory=list)
    port: int = 0
    arrived: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/callscribe"

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The events it answered 200, in the order they came."""
        return [d.event for d in self.deliveries if d.status == 200]

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Until `count` events were accepted."""
        with trio.fail_after(timeout):
            while len(self.accepted) < count:
                await self.arrived.wait()

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._exchange(stream)
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass  # the client went away (callscribe closing its HTTP client)

    async def _exchange(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request, body = await self._read_request(connection, stream)
                if request is None:
                    return
                if self.delay_s:
                    await trio.sleep(self.delay_s)
                status = 500 if len(self.deliveries) < self.fail_first else 200
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.deliveries.append(Delivery(headers, body, status))
                self.arrived.set()
                self.arrived = trio.Event()
                if self.endless_reply:
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(1200):  # a minute of it at most, unless the client goes first
                        await stream.send_all(b"400\r\n" + b"x" * 1024 + b"\r\n")
                        await trio.sleep(0.05)
                    return
                if self.trickled_reply:
                    await stream.send_all(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(600):  # a minute of it at most, unless the client goes first
                        await stream.send_all(b"X")
                        await trio.sleep(0.1)
                    return
                reply = b"ok" if status == 200 else b"not now"
                await stream.send_all(
                    connection.send(h11.Response(status_code=status, headers=[("Content-Length", str(len(reply)))]))
                    + connection.send(h11.Data(data=reply))
                    + connection.send(h11.EndOfMessage())
                )
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()

    async def _read_request(self, connection: h11.Connection, stream: trio.SocketStream) -> tuple[Any, bytes]:
        request = None
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:
                return None, b""
