"""Tests for callscribe.server.speech: Aura against FakeAura, real espeak-ng, choosing an engine."""

from __future__ import annotations

import array
import math
import os
import shutil
import sys

import httpx
import pytest
import trio

import callscribe
from callscribe.core import audio as mulaw
from callscribe.server.speech import (
    AURA_AUDIO_PARAMS,
    DEFAULT_AURA_MODEL,
    DEFAULT_AURA_URL,
    ESPEAK_MAX_TEXT_BYTES,
    AuraEngine,
    EspeakEngine,
    SpeechEngine,
    SpeechError,
    engine_from_settings,
)
from callscribe.testing.fake_aura import FakeAura, FakeAuraBehaviour

KEY = "speak-key"
ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng) - real-subprocess tests skipped"
)


# --- Deepgram Aura against FakeAura ---------------------------------------------------------------


@pytest.fixture
async def fake_aura(nursery: trio.Nursery) -> FakeAura:
    fake = FakeAura(FakeAuraBehaviour(api_key=KEY))
    await nursery.start(fake.serve)
    return fake


async def speak(engine: SpeechEngine, text: str) -> list[bytes]:
    async with engine.synthesize(text) as audio:
        return [chunk async for chunk in audio]


async def test_aura_streams_the_audio(fake_aura: FakeAura) -> None:
    text = "Welcome to game forty two."
    with trio.fail_after(5):
        chunks = await speak(AuraEngine(KEY, url=fake_aura.url), text)
    assert b"".join(chunks) == fake_aura.expected_audio(text)
    assert len(chunks) > 1 and all(chunks)
    (request,) = fake_aura.requests
    assert request.method == "POST" and request.path == "/v1/speak"
    assert request.headers["authorization"] == f"Token {KEY}"
    assert request.query == {"model": DEFAULT_AURA_MODEL, **AURA_AUDIO_PARAMS}
    assert request.text == text and request.completed


async def test_aura_first_chunk_arrives_before_the_last_is_produced(fake_aura: FakeAura) -> None:
    fake_aura.behaviour.hold_after_chunks = 1
    text = "A long enough sentence for several chunks of audio."
    expected = fake_aura.expected_audio(text)
    with trio.fail_after(5):
        async with AuraEngine(KEY, url=fake_aura.url).synthesize(text) as audio:
            first = await audio.__anext__()
            (request,) = fake_aura.requests
            assert request.chunks_sent == 1 and not request.completed
            assert expected.startswith(first)
            fake_aura.release()
            rest = [chunk async for chunk in audio]
    assert first + b"".join(rest) == expected and request.completed


async def test_aura_keeps_url_options_but_forces_the_audio_format(fake_aura: FakeAura) -> None:
    engine = AuraEngine(KEY, url=fake_aura.url + "?encoding=linear16&speed=1.2", model="aura-2-zeus-en")
    with trio.fail_after(5):
        await speak(engine, "hi")
    assert fake_aura.requests[0].query == {
        "encoding": "mulaw",
        "speed": "1.2",
        "model": "aura-2-zeus-en",
        "sample_rate": "8000",
        "container": "none",
    }


async def test_aura_wrong_key_is_a_speech_error_with_status(fake_aura: FakeAura) -> None:
    with trio.fail_after(5), pytest.raises(SpeechError) as raised:
        await speak(AuraEngine("wrong", url=fake_aura.url), "hello")
    assert raised.value.status == 401
    assert str(raised.value).startswith("Deepgram Aura answered 401: INVALID_AUTH: Invalid credentials. (request id ")


@pytest.mark.parametrize("status", [400, 402, 429, 503])
async def test_aura_refusals_become_speech_errors(fake_aura: FakeAura, status: int) -> None:
    fake_aura.behaviour.reject_status = status
    with trio.fail_after(5), pytest.raises(SpeechError, match=f"answered {status}: REJECTED") as raised:
        await speak(AuraEngine(KEY, url=fake_aura.url), "hello")
    assert raised.value.status == status


async def test_aura_stream_breaking_off_is_a_speech_error(fake_aura: FakeAura) -> None:
    fake_aura.behaviour.fail_after_chunks = 2
    received: list[bytes] = []
    with trio.fail_after(5), pytest.raises(SpeechError, match="Deepgram Aura stream broke off") as raised:
        async with AuraEngine(KEY, url=fake_aura.url).synthesize("a sentence long enough") as audio:
            async for chunk in audio:
                received.append(chunk)
    assert raised.value.status is None
    assert len(b"".join(received)) == 2 * fake_aura.behaviour.chunk_bytes


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/json"])
async def test_aura_answering_with_something_other_than_audio_is_a_speech_error(
    fake_aura: FakeAura, content_type: str
) -> None:
    # A 200 page or JSON (a URL that is not Aura's, Aura's `callback` mode) played as mu-law is
    # loud noise in the caller's ear.
    fake_aura.behaviour.content_type = content_type
    with (
        trio.fail_after(5),
        pytest.raises(SpeechError, match=f"answered 200 with {content_type.split(';')[0]}, not audio"),
    ):
        await speak(AuraEngine(KEY, url=fake_aura.url), "hello")


async def test_aura_slow_first_byte(fake_aura: FakeAura) -> None:
    fake_aura.behaviour.first_byte_delay_s = 0.3
    with trio.fail_after(5):
        assert await speak(AuraEngine(KEY, url=fake_aura.url, timeout=3), "ok")
    fake_aura.behaviour.first_byte_delay_s = 10
    with trio.fail_after(5), pytest.raises(SpeechError, match="request failed: ReadTimeout"):
        await speak(AuraEngine(KEY, url=fake_aura.url, timeout=0.2), "ok")


async def test_aura_unreachable_is_a_speech_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(5), pytest.raises(SpeechError, match="Deepgram Aura request failed: ConnectError"):
        await speak(AuraEngine(KEY, url=f"http://127.0.0.1:{port}/v1/speak"), "hello")


async def test_aura_shared_client_is_reused_and_left_open(fake_aura: FakeAura) -> None:
    async with httpx.AsyncClient() as client:
        engine = AuraEngine(KEY, url=fake_aura.url, client=client)
        with trio.fail_after(5):
            first = await speak(engine, "one")
            second = await speak(engine, "two")
        assert b"".join(first) == fake_aura.expected_audio("one")
        assert b"".join(second) == fake_aura.expected_audio("two")
        assert not client.is_closed
    assert [r.text for r in fake_aura.requests] == ["one", "two"]


async def test_aura_leaving_early_closes_the_request(fake_aura: FakeAura) -> None:
    fake_aura.behaviour.hold_after_chunks = 1
    engine = AuraEngine(KEY, url=fake_aura.url)
    with trio.fail_after(5):
        async with engine.synthesize("stop me after the first chunk") as audio:
            async for _chunk in audio:
                break
        fake_aura.release()
        fake_aura.behaviour.hold_after_chunks = None
        assert await speak(engine, "still serving")  # the fake survived the hang-up
    assert not fake_aura.requests[0].completed


async def test_aura_blank_text_makes_no_request(fake_aura: FakeAura) -> None:
    with trio.fail_after(5):
        assert await speak(AuraEngine(KEY, url=fake_aura.url), "  \n") == []
    assert fake_aura.requests == []


def test_aura_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="API key"):
        AuraEngine("")
    # httpx sends headers in ASCII: a pasted curly quote raised UnicodeEncodeError, with the key
    # in it, at every Say (and ended the call)
    with pytest.raises(ValueError, match="API key has a character that is not printable ASCII") as raised:
        AuraEngine("secret\u201d")
    assert "secret" not in str(raised.value)
    with pytest.raises(ValueError, match="http"):
        AuraEngine(KEY, url="ftp://example.com/speak")
    engine = AuraEngine(KEY)
    assert engine.url.startswith(DEFAULT_AURA_URL + "?model=aura-2-thalia-en&encoding=mulaw")


# --- choosing an engine --------------------------------------------------------------------------


def test_engine_from_settings() -> None:
    aura = engine_from_settings("key", aura_url="http://127.0.0.1:1/v1/speak")
    assert isinstance(aura, AuraEngine) and aura.url.startswith("http://127.0.0.1:1/v1/speak?")
    assert isinstance(engine_from_settings(None), EspeakEngine)
    assert isinstance(engine_from_settings("  "), EspeakEngine)
    assert isinstance(engine_from_settings("key", prefer="espeak"), EspeakEngine)
    assert isinstance(engine_from_settings("key", prefer="aura"), AuraEngine)
    assert engine_from_settings("key", aura_model="aura-2-zeus-en").model == "aura-2-zeus-en"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="needs a Deepgram API key"):
        engine_from_settings(None, prefer="aura")
    with pytest.raises(ValueError, match="auto, aura or espeak"):
        engine_from_settings("key", prefer="festival")  # type: ignore[arg-type]
    for engine in (aura, EspeakEngine()):
        assert isinstance(engine, SpeechEngine)
    assert (aura.name, EspeakEngine().name) == ("aura", "espeak-ng")


# --- espeak-ng -----------------------------------------------------------------------------------


async def test_espeak_missing_program_is_a_speech_error() -> None:
    engine = EspeakEngine(executable="no-such-espeak-program")
    assert not engine.available()
    with trio.fail_after(5), pytest.raises(SpeechError, match="no-such-espeak-program is not installed"):
        await speak(engine, "hello")


def test_espeak_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="rate"):
        EspeakEngine(rate=0)
    with pytest.raises(ValueError, match="voice"):
        EspeakEngine(voice="--help")
    assert EspeakEngine(voice="en-gb", rate=150).command("-hi\0there") == [
        "espeak-ng", "--stdout", "-v", "en-gb", "-s", "150", "--", "-hi there",
    ]  # fmt: skip


async def test_espeak_refuses_text_too_long_for_a_command_line() -> None:
    with trio.fail_after(5), pytest.raises(SpeechError, match="text too long for espeak-ng"):
        await speak(EspeakEngine(), "x" * (ESPEAK_MAX_TEXT_BYTES + 1))


@needs_espeak
async def test_espeak_speaks_8khz_mulaw_matching_its_wav_output() -> None:
    text = "Please say your game code."
    engine = EspeakEngine()
    assert engine.available()
    with trio.fail_after(10):
        chunks = await speak(engine, text)
    audio = b"".join(chunks)
    # The same command run to completion gives a WAV whose conversion is exactly what streamed.
    with trio.fail_after(10):
        wav = (await trio.run_process(engine.command(text), capture_stdout=True)).stdout
    converter = mulaw.WavToMulaw()
    assert audio == converter.feed(wav) + converter.finish()
    assert converter.header == mulaw.WavHeader("pcm", 1, 22050, 2, 44, None)  # espeak-ng's streaming header
    pcm_samples = (len(wav) - 44) // 2
    assert abs(len(audio) - pcm_samples * 8000 / 22050) <= 1
    assert 0.8 <= len(audio) / 8000 <= 6.0  # plausible length for six words
    decoded = array.array("h", mulaw.decode(audio))
    rms = math.sqrt(sum(s * s for s in decoded) / len(decoded))
    assert rms > 300  # speech, not silence


@needs_espeak
async def test_espeak_longer_text_gives_longer_audio_and_rate_matters() -> None:
    with trio.fail_after(10):
        short = b"".join(await speak(EspeakEngine(), "Hello."))
        long = b"".join(await speak(EspeakEngine(), "Hello. " * 6 + "Welcome to the game."))
        fast = b"".join(await speak(EspeakEngine(rate=350), "Hello. " * 6 + "Welcome to the game."))
    assert 0 < len(short) < len(long)
    assert len(fast) < len(long) * 0.8


@needs_espeak
async def test_espeak_text_is_never_an_option() -> None:
    with trio.fail_after(10):
        audio = b"".join(await speak(EspeakEngine(), "-v xx --help\0"))
    assert len(audio) > 4000


@needs_espeak
async def test_espeak_speaks_any_text_whatever_the_locale() -> None:
    # The text goes to espeak-ng as UTF-8, which it reads in any locale; in a non-UTF-8 one
    # (Python's UTF-8 mode off) it was encoded for the locale, and "caf\u00e9" raised
    # UnicodeEncodeError, which ended the call it was said in.
    code = (
        "import trio\n"
        "from callscribe.server.speech import EspeakEngine\n"
        "async def main():\n"
        "    async with EspeakEngine().synthesize('caf\\u00e9 \\u65e5\\u672c') as audio:\n"
        "        print(len(b''.join([chunk async for chunk in audio])))\n"
        "trio.run(main)\n"
    )
    src = os.path.dirname(os.path.dirname(callscribe.__file__))
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": src}
    with trio.fail_after(20):
        done = await trio.run_process(
            [sys.executable, "-c", code], env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
    assert int(done.stdout) > 4000


@needs_espeak
async def test_espeak_unknown_voice_is_a_speech_error() -> None:
    with trio.fail_after(10), pytest.raises(SpeechError, match=r"espeak-ng failed \(exit status 1\): .*voice"):
        await speak(EspeakEngine(voice="xx-no-such-voice"), "hello")


@needs_espeak
async def test_espeak_leaving_early_kills_the_process() -> None:
    text = "This sentence goes on and on. " * 200
    with trio.fail_after(10):
        async with EspeakEngine().synthesize(text) as audio:
            first = await audio.__anext__()
            process = audio.process  # type: ignore[attr-defined]
        assert first
    assert process.returncode is not None and process.returncode < 0  # killed by a signal
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # and reaped


@needs_espeak
async def test_espeak_cancellation_kills_the_process() -> None:
    text = "This sentence goes on and on. " * 200
    processes = []
    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            async with EspeakEngine().synthesize(text) as audio:
                processes.append(audio.process)  # type: ignore[attr-defined]
                async for _chunk in audio:
                    await trio.sleep(0.05)  # a slow consumer: the deadline hits mid-stream
        assert scope.cancelled_caught
    assert processes[0].returncode is not None


async def test_espeak_blank_text_is_no_audio() -> None:
    with trio.fail_after(5):
        assert await speak(EspeakEngine(executable="no-such-espeak-program"), " ") == []


async def test_an_aura_error_body_of_nested_json_is_a_speech_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"[" * 4096, headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        engine = AuraEngine("key", url="http://aura.test/v1/speak", client=client)
        with pytest.raises(SpeechError, match="502"):
            async with engine.synthesize("hello") as audio:
                async for _ in audio:
                    pass


# -- 4. Each Say with Aura (as serve.py builds it) constructs an httpx.AsyncClient: synchronous SSL
#       set-up that blocks the event loop of every call on the process


async def test_aura_makes_its_http_client_once_not_per_say(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Making a client loads the CA bundle (30-60 ms on the event loop, holding up every call of the
    # process): the engine makes one, when it is made, and every Say uses it.
    aura = FakeAura(FakeAuraBehaviour(api_key="key"))
    await nursery.start(aura.serve)
    engine = engine_from_settings("key", prefer="aura", aura_url=aura.url)  # as serve.py makes it
    made = 0
    real = httpx.AsyncClient

    def counting(*args: object, **kwargs: object) -> httpx.AsyncClient:
        nonlocal made
        made += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", counting)
    for _ in range(3):
        async with engine.synthesize("Welcome to the game.") as audio:
            assert [chunk async for chunk in audio]
    assert made == 0 and len(aura.requests) == 3
    assert isinstance(engine, AuraEngine)
    await engine.aclose()
