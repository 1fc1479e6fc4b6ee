"""argparse value types shared by the command-line tools (numbers with bounds, probabilities)."""

from __future__ import annotations

import argparse
import math


def _non_negative(text: str, parse: type[float] | type[int], kind: str) -> float:
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be {kind} >= 0, got {text}")
    return value


def _nonzero(value: float) -> float:
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def non_negative_float(text: str) -> float:
    return float(_non_negative(text, float, "a number"))


def positive_float(text: str) -> float:
    return float(_nonzero(non_negative_float(text)))


def non_negative_int(text: str) -> int:
    return int(_non_negative(text, int, "an integer"))


def positive_int(text: str) -> int:
    return int(_nonzero(non_negative_int(text)))


def probability(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value
