"""``callscribe bench``'s command line: what the options ask the scenarios and steps to do."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from callscribe.bench.options import DEFAULT_STEPS, Settings, server_cpus
from callscribe.bench.runner import _options_from_args, add_cli_arguments, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="callscribe bench")
    add_cli_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_full_benchmark() -> None:
    settings = settings_from_args(parse())
    assert settings == Settings() and settings.steps == DEFAULT_STEPS


def test_quick_makes_everything_small_but_explicit_options_win() -> None:
    quick = settings_from_args(parse("--quick"))
    assert (quick.steps, quick.step_seconds, quick.refine, quick.profile_calls) == ((5, 10, 20), 4.0, 0, 10)
    chosen = settings_from_args(
        parse("--quick", "--steps", "3,6", "--refine", "1", "--step-seconds", "2", "--profile-calls", "7")
    )
    assert (chosen.steps, chosen.step_seconds, chosen.refine, chosen.profile_calls) == ((3, 6), 2.0, 1, 7)


@pytest.mark.parametrize("steps", ["", "a,b", "0,5"])
def test_bad_step_lists_are_usage_errors(steps: str) -> None:
    with pytest.raises(SystemExit):
        parse("--steps", steps)


def test_store_options() -> None:
    settings = settings_from_args(parse("--scenario", "store", "--store-calls", "30", "--store-rounds", "5"))
    assert (settings.store_calls, settings.store_rounds) == (30, 5)
    assert (Settings().store_calls, Settings().store_rounds) == (None, 3)
    assert parse().server_store == "sqlite" and parse("--server-store", "none").server_store == "none"


def test_the_servers_cpus_follow_the_pinning_options(tmp_path: Path) -> None:
    one = _options_from_args(parse("--server-cpu", "1", "--load-cpu", "0"), tmp_path)
    assert server_cpus(one) == "1"
    spread = _options_from_args(parse("--workers", "2"), tmp_path)
    assert server_cpus(spread) == f"0-{(os.cpu_count() or 1) - 1}"  # the load's CPU too
    kept_apart = _options_from_args(parse("--workers", "2", "--workers-cpus", "0"), tmp_path)
    assert server_cpus(kept_apart) == "0"
