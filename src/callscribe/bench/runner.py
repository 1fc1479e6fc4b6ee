"""``callscribe bench``: calls per core, latency and memory of a real server process, measured.

The command line: it parses the options, prepares the machine (pinning, file descriptors), runs the
asked scenarios (:mod:`callscribe.bench.scenarios`, each a series of steps, see
:mod:`callscribe.bench.step`) and writes the results to ``--out`` as JSON, Markdown and a PNG plot
(matplotlib; ``pip install -e '.[bench]'``); see docs/performance.md for the method and the numbers.
``--quick`` makes everything small.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from callscribe.bench.options import DEFAULT_STEPS, Options, Settings

SCENARIOS = ("ramp", "floor", "fanout", "soak", "store", "viewers", "workers", "streams")


def _interrupted(error: BaseException) -> bool:
    """Ctrl-C, also when trio hands it over inside an exception group."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_interrupted(sub) for sub in error.exceptions)
    return False


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("call counts must be >= 1")
    return values


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``callscribe bench``."""
    parser.add_argument(
        "--scenario",
        action="append",
        choices=(*SCENARIOS, "all"),
        help="what to run (repeatable): ramp, floor, fanout, soak, store (the call store off and on, in"
        " interleaved rounds), viewers (1 call watched by 1 and by 50 subscribers), workers (--workers 1"
        " and 2), streams (subscribers on another process), or all (default: ramp, floor and fanout; the"
        " others run only when asked)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run: small steps, a few seconds each")
    parser.add_argument(
        "--steps", type=_int_list, help=f"call counts of the ramp (default {','.join(map(str, DEFAULT_STEPS))})"
    )
    parser.add_argument("--max-calls", type=int, default=1000, help="never ramp above this (default 1000)")
    parser.add_argument(
        "--refine",
        type=int,
        default=2,
        help="bisection steps between the last sustained and the first unsustained count (default 2)",
    )
    parser.add_argument("--step-seconds", type=float, help="measurement window per step (default 15)")
    parser.add_argument("--warmup-seconds", type=float, help="after set-up, before measuring (default 5)")
    parser.add_argument("--subscribers", type=int, default=1, help="subscribers per call (default 1)")
    parser.add_argument("--window-ms", type=int, default=100, help="the server's --window-ms (default 100)")
    parser.add_argument(
        "--floor-calls",
        type=int,
        help="calls for the floor comparison (default: the ramp's largest sustained count, "
        "so that every server keeps up; 100 without a ramp)",
    )
    parser.add_argument("--fanout-subscribers", type=int, help="subscribers of the one fan-out call (default 1000)")
    parser.add_argument("--fanout-seconds", type=float, help="fan-out measurement window (default 30)")
    parser.add_argument("--soak-minutes", type=float, default=None, help="soak length (default 10)")
    parser.add_argument("--soak-calls", type=int, default=None, help="concurrent calls during the soak (default 50)")
    parser.add_argument(
        "--soak-call-seconds",
        type=float,
        default=None,
        help="each soak call lasts this long and is replaced by a new one (default 60; 0 = calls last the whole soak)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one step under py-spy and summarise where the server's time goes",
    )
    parser.add_argument("--profile-calls", type=int, default=100, help="calls of the profiled step (default 100)")
    parser.add_argument(
        "--out",
        default="bench-results",
        help="directory for bench-results.json/.md, the plot and logs (default ./bench-results)",
    )
    parser.add_argument("--log-dir", default=None, help="server logs (default: OUT/logs)")
    parser.add_argument(
        "--fresh", action="store_true", help="do not merge with an existing bench-results.json in --out"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the load to separate CPUs")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (default 0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for the load process (default 1)")
    parser.add_argument(
        "--server-pythonpath",
        default=None,
        help="prepended to the server's PYTHONPATH (to measure another tree of callscribe)",
    )
    parser.add_argument("--server-log-level", default="info", help="the server's --log-level (default info)")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a step when other processes used more than 5%% of a benchmark core (default 2)",
    )
    parser.add_argument(
        "--coalesce-tracks",
        action="store_true",
        help="write each 20 ms pair of frames (both tracks) with one send (default: one send per frame)",
    )
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")
    parser.add_argument(
        "--server-store",
        default="sqlite",
        help="the server's call store in every step but the store scenario's: sqlite (a fresh file per"
        " server, the default of callscribe serve), none, or a postgresql:// URL (default sqlite)",
    )
    parser.add_argument(
        "--store-calls",
        type=int,
        default=None,
        help="calls of the store scenario (default: the ramp's largest sustained count, else 40)",
    )
    parser.add_argument("--store-rounds", type=int, default=None, help="store off/on rounds (default 3)")
    parser.add_argument(
        "--workers", type=int, default=1, help="ramp, floor and fanout against `serve --workers N` (N > 1: with Redis)"
    )
    parser.add_argument(
        "--workers-cpus",
        default=None,
        metavar="LIST",
        help="with --workers N > 1: taskset's CPU list for the server's processes, e.g. 0 to keep them"
        " off the load's CPU (default: every CPU)",
    )
    parser.add_argument(
        "--redis", action="store_true", help="serve with a Redis of each step's own, even with 1 worker"
    )
    parser.add_argument("--scale-rounds", type=int, help="interleaved rounds of workers and streams (default 2)")
    parser.add_argument("--streams-calls", type=int, help="calls of the streams scenario (default 100)")
    parser.add_argument(
        "--baseline-pythonpath",
        default=None,
        help="streams: the tree to compare with (prepended to its server's PYTHONPATH)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The scenario settings the command line asks for (``--quick`` first, explicit options over it)."""
    s = Settings()
    if args.quick:
        s = Settings(
            steps=(5, 10, 20),
            step_seconds=4.0,
            warmup_seconds=1.0,
            fanout_subscribers=100,
            fanout_seconds=5.0,
            soak_minutes=1.0,
            soak_calls=10,
            soak_call_seconds=20.0,
            refine=0,
            profile_calls=10,
            viewer_rounds=2,
        )
    if args.steps:
        s.steps = args.steps
    s.max_calls = args.max_calls
    s.refine = args.refine if not args.quick or args.refine != 2 else 0
    s.subscribers = args.subscribers
    for name in (
        "step_seconds",
        "warmup_seconds",
        "floor_calls",
        "fanout_subscribers",
        "fanout_seconds",
        "soak_minutes",
        "soak_calls",
        "soak_call_seconds",
        "scale_rounds",
        "streams_calls",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    s.profile = args.profile
    s.store_calls = args.store_calls
    if args.store_rounds is not None:
        s.store_rounds = max(1, args.store_rounds)
    if args.profile_calls != 100 or not args.quick:
        s.profile_calls = args.profile_calls
    return s


def _raise_fd_limit(needed: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    except (ImportError, ValueError, OSError):
        pass


def _options_from_args(args: argparse.Namespace, out: Path) -> Options:
    """The step options the command line asks for, unpinned where pinning cannot work."""
    opts = Options(
        window_ms=args.window_ms,
        pin=not args.no_pin,
        retries=max(0, args.retries),
        server_cpu=args.server_cpu,
        load_cpu=args.load_cpu,
        server_pythonpath=args.server_pythonpath,
        server_log_level=args.server_log_level,
        log_dir=Path(args.log_dir) if args.log_dir else out / "logs",
        coalesce_tracks=args.coalesce_tracks,
        store=args.server_store,
        workers=max(1, args.workers),
        workers_cpus=args.workers_cpus,
        redis=args.redis,
    )
    cpus = os.sched_getaffinity(0)
    if opts.pin and (
        len(cpus) < 2 or opts.server_cpu not in cpus or opts.load_cpu not in cpus or opts.server_cpu == opts.load_cpu
    ):
        print(
            f"bench: cannot pin to CPUs {opts.server_cpu}/{opts.load_cpu} (have {sorted(cpus)}); running unpinned",
            file=sys.stderr,
        )
        opts.pin = False
    if opts.pin and not shutil.which("taskset"):
        print("bench: taskset not found; the server runs unpinned", file=sys.stderr)
    return opts


def run_from_cli(args: argparse.Namespace) -> int:
    """Run ``callscribe bench``; 0 when it ran (whatever it measured), 1 if it could not, 130 on Ctrl-C."""
    # `callscribe` builds every subcommand's parser at start: the machinery loads only when it runs.
    from callscribe.bench import plot, report, scale, scenarios
    from callscribe.bench.headline import headline_text
    from callscribe.bench.machine import machine_info
    from callscribe.bench.processes import kill_all

    chosen = args.scenario or ["ramp", "floor", "fanout"]
    if "all" in chosen:
        chosen = list(SCENARIOS)
    settings = settings_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = _options_from_args(args, out)
    if not plot.plotting_available():
        print(
            "bench: matplotlib is not installed, so no plot will be drawn (pip install -e '.[bench]')", file=sys.stderr
        )
    _raise_fd_limit(4 * max(settings.fanout_subscribers, max(settings.steps) * (1 + settings.subscribers)) + 256)
    if opts.pin:
        os.sched_setaffinity(0, {opts.load_cpu})
    results = report.load_results(out) if not args.fresh else {}
    results["machine"] = machine_info(opts)
    command = "callscribe bench " + " ".join(
        sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else sys.argv[1:]
    )
    stamp = {
        "command": command.strip(),
        "label": args.label,
        "date": results["machine"]["date"],
        "git": results["machine"]["git"],
    }
    try:
        if "ramp" in chosen:
            opts.say(f"== ramp: steps {','.join(map(str, settings.steps))}, {settings.step_seconds:g} s each")
            results["ramp"] = {**scenarios.scenario_ramp(opts, settings), **stamp}
        if "floor" in chosen:
            ramp = results.get("ramp") if "ramp" in chosen else None
            opts.say(f"== floor: {scenarios.floor_calls(settings, ramp)} calls against the floor servers")
            results["floor"] = {**scenarios.scenario_floor(opts, settings, ramp), **stamp}
        if "fanout" in chosen:
            opts.say(f"== fan-out: 1 call, {settings.fanout_subscribers} subscribers")
            results["fanout"] = {**scenarios.scenario_fanout(opts, settings), **stamp}
        if "soak" in chosen:
            opts.say(f"== soak: {settings.soak_calls} calls for {settings.soak_minutes:g} min")
            results["soak"] = {**scenarios.scenario_soak(opts, settings), **stamp}
        if "store" in chosen:
            from callscribe.bench.store_ab import scenario_store, store_calls

            ramp = results.get("ramp") if "ramp" in chosen else None
            opts.say(
                f"== store: {store_calls(settings, ramp)} calls, the store off and on, {settings.store_rounds} rounds"
            )
            results["store"] = {**scenario_store(opts, settings, ramp), **stamp}
        if "viewers" in chosen:
            from callscribe.bench.viewers import VIEWERS, scenario_viewers

            opts.say(f"== viewers: 1 call watched by 1 and by {VIEWERS} subscribers, {settings.viewer_rounds} rounds")
            results["viewers"] = {**scenario_viewers(opts, settings), **stamp}
        if "workers" in chosen:
            opts.say(f"== workers: --workers 1 and 2, {settings.scale_rounds} interleaved rounds")
            results["workers"] = {**scale.scenario_workers(opts, settings), **stamp}
        if "streams" in chosen:
            opts.say(f"== streams: {settings.streams_calls} calls, their subscribers on another process")
            results["streams"] = {**scale.scenario_streams(opts, settings, args.baseline_pythonpath), **stamp}
        if settings.profile:
            opts.say(f"== profile: {settings.profile_calls} calls under py-spy")
            path = out / f"profile-{settings.profile_calls}-calls.folded"
            results["profile"] = {**scenarios.scenario_profile(opts, settings, path), **stamp}
    except BaseException as error:
        kill_all()
        if _interrupted(error):
            print("bench: interrupted; no results written", file=sys.stderr)
            return 130
        if isinstance(error, RuntimeError):
            print(f"bench: {error}", file=sys.stderr)
            return 1
        raise
    finally:
        kill_all()
    paths = report.write_outputs(results, out)
    print(headline_text(results))
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callscribe bench", description=__doc__.split("\n\n")[0])
    add_cli_arguments(parser)
    return run_from_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
