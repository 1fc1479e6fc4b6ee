"""/metrics and the health check at their edges: what counts as a dropped subscriber, a proxy in
the environment, receivers alike but for their query, and who may read the metrics."""

from __future__ import annotations

import argparse
import re

import httpx
import trio
import trio_websocket

from callscribe.cli import _healthcheck
from callscribe.core import webhooks
from callscribe.server.metrics import Metrics
from callscribe.server.webhook_delivery import ReceiverStats
from callscribe.testing.simulator import CallSpec, call_messages
from conftest import RunningServer, Subscriber, noise, subscribe


def metric(text: str, name: str) -> float:
    (value,) = re.findall(rf"^{name} (\S+)$", text, re.M)
    return float(value)


async def test_subscribers_of_a_call_closed_for_invalid_frames_are_not_counted_as_dropped(
    server: RunningServer,
) -> None:
    # README: callscribe_subscribers_dropped counts "subscribers dropped for lagging or stalling".
    # A call whose Twilio socket sends 1000 unusable frames is closed with 1008; its (perfectly
    # healthy) subscribers get that close code too, and subscribers.py counts any 1008 as a drop.
    sid = "CA" + "7" * 32
    connected_and_start = [m for _, m in list(call_messages(CallSpec(inbound=noise(0.2, 1), call_sid=sid)))[:2]]
    subscriber = Subscriber()
    async with trio_websocket.open_websocket_url(server.url("/twilio")) as twilio:
        for message in connected_and_start:
            await twilio.send_message(message)
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: subscribe(server, sid, subscriber, task_status=task_status))
            for _ in range(1000):
                await twilio.send_message("not json")
            await twilio.aclose()
    assert subscriber.close_code == 1008 and "invalid frames" in (subscriber.close_reason or "")
    async with httpx.AsyncClient() as http:
        text = (await http.get(server.http_url + "/metrics")).text
    assert metric(text, "callscribe_subscribers_dropped_total") == 0.0


async def test_healthcheck_does_not_go_through_an_http_proxy_from_the_environment(
    server: RunningServer, monkeypatch
) -> None:
    # A container with HTTP_PROXY/HTTPS_PROXY set (for outgoing webhooks, say) must still find its
    # own server on 127.0.0.1: httpx's trust_env sends the health check to the proxy instead.
    address = server.http_url.split("://", 1)[1]
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    args = argparse.Namespace(listen=address, cert=None)
    assert await trio.to_thread.run_sync(_healthcheck, args) == 0  # the server answers /healthz
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    assert await trio.to_thread.run_sync(_healthcheck, args) == 0


def test_two_receivers_differing_only_in_query_get_distinct_metric_series() -> None:
    # Receivers are de-duplicated on the full URL, but labelled with receiver_name (no query, no
    # credentials): two receivers give the same label set twice, which the exposition format forbids
    # (Prometheus keeps one of them: the other receiver's deliveries and drops are invisible).
    urls = ("https://hooks.example.com/calls?tenant=a", "https://hooks.example.com/calls?tenant=b")

    class Delivery:  # what metrics read of a WebhookDelivery, named as it names its receivers
        def __init__(self) -> None:
            self.stats = {url: ReceiverStats(delivered=i + 1, dropped=i) for i, url in enumerate(urls)}
            self.names = webhooks.receiver_names(urls)

    metrics = Metrics(lambda: {"active_calls": 0, "subscribers": 0, "games": 0, "hub_up": 1})
    metrics.store.delivery = Delivery()  # type: ignore[assignment]
    text = metrics.render().decode()
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("callscribe_webhook_")]
    assert len(series) == len(set(series)), sorted(s for s in series if series.count(s) > 1)


async def test_with_tokens_required_metrics_need_one_too(nursery: trio.Nursery, fake_deepgram, tmp_path) -> None:
    # With CALLSCRIBE_TOKENS set, /metrics still answers anyone (no token, no Origin check), and
    # its `receiver` label keeps the webhook URL's path, where Slack/Discord/Zapier-style receivers
    # carry their secret (receiver_name strips user:password and the query only).
    from callscribe.server.store import StoreSettings
    from conftest import start_server

    secret_path = "/services/T000/B000/XXXXSECRETXXXX"
    server = await start_server(
        nursery,
        fake_deepgram,
        tokens=frozenset({"a-long-enough-token"}),
        store=StoreSettings(
            location=str(tmp_path / "calls.db"), webhook_urls=(f"https://hooks.example.com{secret_path}",)
        ),
    )
    try:
        async with httpx.AsyncClient() as http:
            games = await http.get(server.http_url + "/api/games")
            metrics = await http.get(server.http_url + "/metrics")
        assert games.status_code == 401  # the token is required elsewhere
        assert metrics.status_code == 401 and metrics.json() == {"error": "a bearer token is required"}
        async with httpx.AsyncClient(headers={"Authorization": "Bearer a-long-enough-token"}) as scraper:
            scraped = await scraper.get(server.http_url + "/metrics")
        assert scraped.status_code == 200 and "callscribe_webhook_deliveries_total" in scraped.text
        assert scraped.headers["content-type"].count("charset") == 1
    finally:
        server.stop.set()
        with trio.fail_after(10):
            await server.done.wait()
