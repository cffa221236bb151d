"""``python -m bench [name ...]``: run benchmarks (all by default), write bench/results/<name>.json, regenerate the README's Performance section.

``report`` is a pseudo-name: ``python -m bench report`` runs nothing and only
regenerates the section from the results already in bench/results/.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCHMARKS = ["raft", "dns", "mesh", "kv", "catalog", "fanout", "events"]
REPORT = "report"  # not a benchmark: the README section from the existing results
RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"


def machine() -> str:
    """'<cpu model>, <n> cores, python <version>': what a reader needs to weigh the figures."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, python {platform.python_version()}"


def scheduling() -> str:
    """``chrt -r N `` when the benchmark runs under a real-time policy (it keeps other work off a
    throughput comparison but distorts latencies, so a result says so), else ``""``."""
    try:
        policy = os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return ""
    if policy in (getattr(os, "SCHED_RR", -1), getattr(os, "SCHED_FIFO", -1)):
        flag = "-r" if policy == os.SCHED_RR else "-f"
        return f"chrt {flag} {os.sched_getparam(0).sched_priority} "
    return ""


def compile_package() -> None:
    """Write the package's bytecode before any agent starts, as a pip install does: with PYTHONDONTWRITEBYTECODE
    set (this machine's shell sets it) an editable install would compile every module at every agent start, about
    250 ms that no installed agent pays."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("agent", "api", "dns", "server"):
        compileall.compile_dir(root / package, quiet=1)


def main() -> None:
    names = sys.argv[1:] or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS and n != REPORT]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)} (or {REPORT})")
    RESULTS.mkdir(exist_ok=True)
    compile_package()
    for name in names:
        if name == REPORT:
            continue
        print(f"== {name}")
        started = time.time()
        result = importlib.import_module(f"bench.{name}").main(sys.argv[1:])
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "machine": machine(),
            "command": f"{scheduling()}python -m bench {name}",
            "seconds": round(time.time() - started, 1),
        }
        (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))
    report()


def report() -> None:
    """Regenerate README.md's Performance section from bench/results/*.json."""
    from bench.report import update_readme

    try:
        changed = update_readme(README, RESULTS)
    except (OSError, ValueError) as err:
        sys.exit(f"== report: README.md not regenerated: {err}")
    print(f"== report: README.md Performance section {'regenerated' if changed else 'already up to date'} from {RESULTS}")


if __name__ == "__main__":
    main()
