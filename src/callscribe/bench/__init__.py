"""The benchmark behind `callscribe bench`: calls per core, latency, memory and fan-out, measured
against a real server process. Imported only by that subcommand."""
