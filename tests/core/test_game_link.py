"""The protocol of a patch between two processes: envelopes, taking and refusing, order, dead peers."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.game_link import (
    CLEAR,
    LEFT,
    PATCH,
    REFUSED,
    SAY,
    TO_GAME,
    UNPATCH,
    CallEnd,
    Envelope,
    ForGame,
    GameEnd,
    decode,
    encode,
    refusal,
)

A, C = "aaaaaaaa", "cccccccc"  # the call's process, the game's process

envelopes = st.builds(
    Envelope,
    kind=st.sampled_from([PATCH, TO_GAME, UNPATCH, REFUSED, SAY, CLEAR, LEFT]),
    call_sid=st.text(),
    game_id=st.text(),
    origin=st.text(),
    seq=st.integers(0, 2**40),
    text=st.text(),
    droppable=st.booleans(),
)


@given(envelopes)
def test_envelopes_travel_unchanged(envelope: Envelope) -> None:
    assert decode(encode(envelope)) == envelope
    assert decode(encode(envelope).encode()) == envelope


@given(st.one_of(st.text(), st.binary(), st.none(), st.integers(), st.dictionaries(st.text(), st.integers())))
def test_anything_else_is_no_envelope_and_never_raises(data: object) -> None:
    assert decode(data) is None or isinstance(decode(data), Envelope)


def test_what_is_not_an_envelope() -> None:
    good = json.loads(encode(Envelope(SAY, "CA1", "g1", C, 0, "hi")))
    for broken in [
        {**good, "kind": "dance"},
        {**good, "seq": -1},
        {**good, "seq": True},
        {**good, "seq": "1"},
        {**good, "droppable": 0},
        {**good, "text": None},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "origin"},
    ]:
        assert decode(json.dumps(broken)) is None, broken
    assert decode("[1, 2]") is None and decode(b"\xff") is None and decode("{") is None


def linked() -> tuple[CallEnd, GameEnd]:
    call, game = CallEnd("CA1", A, "42", "g1", C), GameEnd("g1", C)
    out, answer = game.receive(call.patch(), busy=False)
    assert out == [] and answer is None and game.call == ("CA1", A)
    return call, game


def deliver(call: CallEnd, game: GameEnd, message: str, droppable: bool = False) -> list[ForGame]:
    envelope = call.to_game(message, droppable)
    assert envelope is not None
    return game.receive(envelope, busy=False)[0]


def test_a_patch_carries_the_machines_messages_in_order_and_the_games_commands_back() -> None:
    call, game = linked()
    assert deliver(call, game, '{"type": "CallConnected"}') == [ForGame('{"type": "CallConnected"}')]
    assert deliver(call, game, "interim", droppable=True) == [ForGame("interim", True)]
    say, clear = game.command(SAY, "Welcome"), game.command(CLEAR)
    assert say is not None and clear is not None
    assert call.receive(say) == (SAY, "Welcome") and call.receive(clear) == (CLEAR, "")
    assert call.receive(say) is None  # a repeat is old news
    unpatch = call.unpatch()
    assert unpatch is not None and call.unpatch() is None
    assert game.receive(unpatch, busy=False) == ([], None) and game.call is None
    assert game.command(SAY, "anyone?") is None  # not patched any more


def test_a_busy_or_patched_game_refuses_and_the_refusal_lets_the_call_go() -> None:
    _, game = linked()
    other = CallEnd("CA2", "bbbbbbbb", "42", "g1", C)
    _, answer = game.receive(other.patch(), busy=False)
    assert answer is not None and answer.kind == REFUSED and answer.text == "game busy"
    assert other.receive(answer) == (LEFT, "game busy") and not other.open
    assert other.to_game("x", False) is None
    fresh, idle = CallEnd("CA3", A, "42", "g2", C), GameEnd("g2", C)
    _, answer = idle.receive(fresh.patch(), busy=True)  # patched to a call of its own process
    assert answer is not None and fresh.receive(answer) == (LEFT, "game busy")
    assert game.call == ("CA1", A)  # the first patch goes on


def test_a_game_gone_before_the_patch_arrived_is_refused() -> None:
    call = CallEnd("CA1", A, "42", "g1", C)
    assert call.receive(refusal(call.patch(), C, "game gone")) == (LEFT, "game gone")


def test_envelopes_from_anyone_else_are_ignored() -> None:
    call, game = linked()
    say = game.command(SAY, "hi")
    assert say is not None
    for stranger in [
        Envelope(SAY, "CA1", "g1", "bbbbbbbb", say.seq, "hi"),  # another process
        Envelope(SAY, "CA1", "g9", C, say.seq, "hi"),  # another game
        Envelope(SAY, "CA9", "g1", C, say.seq, "hi"),  # another call
        Envelope(TO_GAME, "CA1", "g1", C, say.seq, "hi"),  # not for the call's side
    ]:
        assert call.receive(stranger) is None
    assert call.receive(say) == (SAY, "hi")
    assert game.receive(Envelope(TO_GAME, "CA1", "g1", "bbbbbbbb", 1, "x"), busy=False) == ([], None)
    assert game.receive(Envelope(TO_GAME, "CA1", "g9", A, 1, "x"), busy=False) == ([], None)


def test_lost_envelopes_are_told_to_the_game_and_the_patch_goes_on() -> None:
    call, game = linked()
    call.to_game("lost", False)
    call.to_game("lost too", False)
    out = deliver(call, game, "arrived")
    assert len(out) == 2 and "2 message(s) of the call were lost" in json.loads(out[0].message)["message"]
    assert out[1] == ForGame("arrived")


def test_lost_commands_of_the_game_are_told_to_the_game_by_the_calls_end() -> None:
    # A Say lost on the way would leave the game waiting for its SpeechDone for ever.
    call, game = linked()
    game.command(SAY, "lost")  # never delivered
    second = game.command(SAY, "arrived")
    assert second is not None
    assert call.receive(second) == (SAY, "arrived")
    notice = call.lost_notice()
    assert notice is not None and notice.kind == TO_GAME
    out = game.receive(notice, busy=False)[0]
    assert json.loads(out[0].message)["message"].startswith("1 message(s) of the game were lost between servers")
    assert call.lost_notice() is None  # said once
    third = game.command(CLEAR)
    assert third is not None and call.receive(third) == (CLEAR, "") and call.lost_notice() is None


def test_a_game_that_leaves_frees_the_call_and_nothing_more_comes_from_it() -> None:
    call, game = linked()
    left = game.left()
    assert left is not None and game.left() is None and game.call is None
    assert call.receive(left) == (LEFT, "game disconnected") and not call.open
    assert call.unpatch() is None  # the game's end knows already


def test_dead_peers() -> None:
    call, game = linked()
    assert call.peer_gone() == (LEFT, "the server at the other end of the patch stopped answering")
    assert call.peer_gone() is None
    messages = [json.loads(m.message) for m in game.peer_gone()]
    assert [m["type"] for m in messages] == ["Error", "CallEnded"] and messages[1]["callSid"] == "CA1"
    assert game.call is None and game.peer_gone() == []


@given(st.lists(st.sampled_from(["to_game", "say", "clear", "left", "unpatch", "peer_gone", "repatch"]), max_size=30))
def test_any_sequence_keeps_both_ends_consistent(steps: list[str]) -> None:
    """Whatever happens, in whatever order, each end is either linked to exactly the other or free,
    and a free end emits nothing and takes nothing."""
    call, game = linked()
    for step in steps:
        if step == "to_game" and (envelope := call.to_game("m", False)) is not None:
            game.receive(envelope, busy=False)
        elif step in ("say", "clear") and (envelope := game.command(step, "t")) is not None:
            call.receive(envelope)
        elif step == "left" and (envelope := game.left()) is not None:
            call.receive(envelope)
        elif step == "unpatch" and (envelope := call.unpatch()) is not None:
            game.receive(envelope, busy=False)
        elif step == "peer_gone":
            call.peer_gone()
            game.peer_gone()
        elif step == "repatch" and not call.open and game.call is None:
            call = CallEnd("CA1", A, "42", "g1", C)
            game.receive(call.patch(), busy=False)
        assert call.open == (game.call is not None)
        if not call.open:
            assert call.to_game("m", False) is None and call.unpatch() is None
            assert game.command(SAY, "x") is None and game.left() is None
