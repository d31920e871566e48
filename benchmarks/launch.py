"""Run one command or pipeline and report its wall time and each member's peak RSS.

Usage (by benchmarks/run.py): ``python -S -I launch.py SPEC_JSON RESULT_FILE``
where SPEC_JSON is ``{"pipeline": [[argv...], ...], "cwd": path-or-null}``.
Members are connected stdout→stdin; the first reads /dev/null, the last writes
to this process's stdout; all share its stderr and environment.  RESULT_FILE
receives ``{"seconds": s, "rss_kib": [..], "status": [..]}``.

Why a separate, tiny process: Linux records a process's RSS high-water mark
*before* exec into its ``ru_maxrss`` too, and a child forked (or vforked) from
the benchmark's own Python — hundreds of MB with psycopg and DuckDB loaded —
would report at least that.  Children of this launcher start from a few MB
(measured by run.py with ``/bin/true`` and printed as the RSS floor).

Only ``os``, ``sys``, ``time`` and ``json`` are imported, so the launcher stays small.
"""

import json
import os
import sys
import time


def run(pipeline: list[list[str]], cwd: str | None) -> dict:
    """Fork/exec every member, wait for all with wait4, and return the measurements."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    upstream = devnull
    pids = []
    started = time.perf_counter()
    for i, argv in enumerate(pipeline):
        last = i == len(pipeline) - 1
        read_end, write_end = (None, None) if last else os.pipe()  # non-inheritable (PEP 446)
        pid = os.fork()
        if pid == 0:  # child: wire stdin/stdout, then become the command
            try:
                os.dup2(upstream, 0)
                if not last:
                    os.dup2(write_end, 1)
                if cwd:
                    os.chdir(cwd)
                os.execvp(argv[0], argv)
            except BaseException as exc:
                os.write(2, f"launch: cannot run {argv[0]}: {exc}\n".encode())
            finally:
                os._exit(127)
        pids.append(pid)
        if upstream != devnull:
            os.close(upstream)
        if not last:
            os.close(write_end)
            upstream = read_end
    os.close(devnull)
    rss, status = [], []
    for pid in pids:
        _, st, usage = os.wait4(pid, 0)
        status.append(os.waitstatus_to_exitcode(st))
        rss.append(usage.ru_maxrss)
    return {"seconds": time.perf_counter() - started, "rss_kib": rss, "status": status}


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = run(spec["pipeline"], spec.get("cwd"))
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
