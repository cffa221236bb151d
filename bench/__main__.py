"""``python -m bench [name ...]``: run benchmarks (all by default) and write bench/results/<name>.json."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = ["raft", "dns", "mesh", "kv", "catalog", "fanout", "events"]
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    names = sys.argv[1:] or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        print(f"== {name}")
        started = time.time()
        result = importlib.import_module(f"bench.{name}").main(sys.argv[1:])
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
            "command": f"python -m bench {name}",
            "seconds": round(time.time() - started, 1),
        }
        (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))


if __name__ == "__main__":
    main()
