"""Game codes keyed in on the phone's keypad (Twilio ``dtmf`` events).

Pure and synchronous. Digits accumulate; ``#`` submits them, ``*`` clears them. A pause is its
user's to handle, by calling :meth:`DtmfCollector.submit` (the patch machine, ``core/patch.py``,
does after ``KEYPAD_PAUSE_S``) or :meth:`DtmfCollector.reset`. The
collector also submits on its own as soon as the digits equal the digit form of an active code
and no longer active code starts with them (``4`` with codes ``4`` and ``42`` active waits;
``42`` then submits at once). Only codes whose normalized form (:func:`callscribe.core.numbers.code_key`)
is one all-digit token can be keyed in (:func:`digit_form`). A submission is the digit string;
pass it to :func:`callscribe.core.codes.find_code` to get the code.
"""

from __future__ import annotations

from collections.abc import Iterable

from callscribe.core.numbers import code_key

__all__ = ["DtmfCollector", "digit_form"]


def digit_form(code: str) -> str | None:
    """The digits to key in for ``code``, or None if it cannot be keyed in."""
    key = code_key(code)
    if len(key) == 1 and key[0].isdecimal() and key[0].isascii():
        return key[0]
    return None


class DtmfCollector:
    """Collects keypad digits into a code entry (see the module documentation).

    ``max_digits`` bounds the entry; further digits push out the oldest ones.
    """

    def __init__(self, *, max_digits: int = 12) -> None:
        if max_digits < 1:
            raise ValueError(f"max_digits must be at least 1, got {max_digits}")
        self._max = max_digits
        self._digits = ""

    @property
    def pending(self) -> str:
        """The digits collected so far."""
        return self._digits

    def press(self, key: str, active_codes: Iterable[str] = ()) -> str | None:
        """Handle one key (Twilio's ``dtmf.digit``). Returns a submitted entry, or None.

        ``0``-``9`` add a digit and submit at once when the digits equal an active code's digit
        form and no longer active code starts with them; ``#`` submits (None if nothing was
        keyed); ``*`` clears; anything else (``A``-``D``, ``w``) is ignored.
        """
        key = key.strip()
        if key == "#":
            return self.submit()
        if key == "*":
            self.reset()
            return None
        if len(key) != 1 or key not in "0123456789":
            return None
        self._digits = (self._digits + key)[-self._max :]
        forms = {form for code in active_codes if (form := digit_form(code)) is not None}
        if self._digits in forms and not any(
            len(form) > len(self._digits) and form.startswith(self._digits) for form in forms
        ):
            return self.submit()
        return None

    def submit(self) -> str | None:
        """Submit the collected digits (None if there are none) and start over."""
        entry, self._digits = self._digits, ""
        return entry or None

    def reset(self) -> None:
        """Forget the collected digits."""
        self._digits = ""
