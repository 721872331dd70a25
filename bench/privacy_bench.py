"""Benchmark of pseudonymisation at landing: routing a Taobao-format file with the switch off and on.

Usage::

    python bench/privacy_bench.py                     # 2M events (~20,000 users)
    python bench/privacy_bench.py --events 10000000   # the data benchmark's file size

Writes the file with :func:`bench.data_bench.write_taobao_file` into a temporary folder, then runs
the routing half of landing (:func:`pipelines.data.routing.split_csv`, no storage) twice per mode,
alternating, and prints the best time of each mode, its rate and the overhead of the keyed hash.
The load average is printed: figures are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.data_bench import write_taobao_file  # noqa: E402
from pipelines.data.formats import build_spec  # noqa: E402
from pipelines.data.routing import split_csv  # noqa: E402
from pipelines.privacy.pseudonym import Pseudonymizer, new_key  # noqa: E402


def _route(source: Path, scratch: Path, mapper: Pseudonymizer | None) -> float:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    start = time.perf_counter()
    split_csv(source, build_spec("taobao"), scratch, dt.datetime.now(dt.UTC), pseudonymize=mapper)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="rows of the generated file (default 2M)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; the best counts (default 2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "events.csv"
        rows = write_taobao_file(source, args.events)
        size_mb = source.stat().st_size / 1e6
        best = {"off": float("inf"), "on": float("inf")}
        for _ in range(args.repeats):
            best["off"] = min(best["off"], _route(source, Path(tmp) / "off", None))
            # A fresh pseudonymizer per run: no id is remembered from an earlier run.
            best["on"] = min(best["on"], _route(source, Path(tmp) / "on", Pseudonymizer(new_key().encode())))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"routing {rows:,} Taobao rows ({size_mb:.0f} MB), load {load}")
    for mode, seconds in best.items():
        print(f"  pseudonymisation {mode:<3}: {seconds:6.2f} s  {rows / seconds / 1e6:5.2f} M rows/s")
    print(f"  overhead of the keyed hash: {best['on'] / best['off'] - 1:+.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
