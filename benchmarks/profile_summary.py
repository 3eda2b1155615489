"""Sum py-spy's collapsed stacks (`py-spy record --format raw`, e.g. benchmarks/ingest_single.py --profile
FILE.txt) by function, by thread and by stage of the request path of `POST /api/events/`.

    python benchmarks/profile_summary.py FILE.txt [--top 25] [--json OUT]

A line of the file is `frame;frame;...;leaf COUNT`, each frame `function (file:line)`; with py-spy's
--threads the first frame is `thread (TID): NAME`. Functions are keyed by `function (file)` (lines
dropped). Self: samples whose leaf it is. Total: samples whose stack holds it (once per sample).
Threads are grouped by name with numbers dropped (ThreadPoolExecutor-426_0 -> ThreadPoolExecutor-N_N):
each of Django's requests under ASGI gets an executor of its own, so the count of distinct names says
how many were started during the recording.

Stages (STAGES below), inclusive: the share of samples whose stack holds a frame of the stage (stages
nest, so they do not add up); exclusive: each sample to the innermost stage in its stack (these add up
to 100% with "other").
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import Any

# (stage, substrings; a frame matches when it holds any). Listed from the outside in: the exclusive
# attribution takes the stage of the innermost matching frame (the last in the stack).
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("twisted/daphne (HTTP, reactor)", ("twisted/", "daphne/")),
    ("asyncio loop", ("asyncio/",)),
    ("django ASGI handler", ("django/core/handlers/asgi.py", "django/core/handlers/base.py")),
    (
        "asgiref sync_to_async / threads",
        ("asgiref/", "channels/db.py", "concurrent/futures/", "threading.py"),
    ),
    (
        "middleware (MiddlewareMixin hops)",
        (
            "django/utils/deprecation.py",
            "django/middleware/",
            "django/contrib/sessions/middleware",
            "django/contrib/auth/middleware",
            "django/contrib/messages/middleware",
            "core/middleware.py",
            "core/outage.py",
            "audit/metrics.py",
            "axes/middleware",
        ),
    ),
    ("URL resolving", ("django/urls/",)),
    ("DRF dispatch (AsyncAPIView)", ("eventbus_project/async_views.py", "rest_framework/views.py")),
    ("DRF initial()", ("APIView.initial (", "EventsView.initial (")),
    (
        "authentication (token lookup)",
        ("events/auth.py", "api_token_get_active", "api_token_mark_used", "rest_framework/request.py"),
    ),
    (
        "permissions (has_perm)",
        (
            "events/permissions.py",
            "has_perm",
            "get_all_permissions",
            "django/contrib/auth/backends.py",
            "axes/backends",
        ),
    ),
    ("Django ORM / SQL compile", ("django/db/models/",)),
    (
        "database driver / connection",
        (
            "django/db/backends/",
            "sqlite3",
            "psycopg",
            "django/db/utils.py",
            "django/db/__init__.py",
            "eventbus_project/sqlite3",
        ),
    ),
    ("body read + validation (ingest)", ("events/ingest.py", "core/json_input.py", "events/base.py")),
    ("publish (services, bus)", ("events/services.py", "events/event_bus.py")),
    ("store writer", ("events/store_writer.py", "events/event_store.py", "events/bulk.py")),
    ("audit/metrics hooks", ("audit/",)),
    ("JSON rendering", ("rest_framework/renderers.py", "rendered (", "django/http/response.py")),
    ("json module", ("json/",)),
]


def function_of(frame: str) -> str:
    """`function (file)` of `function (file:line)`."""
    return re.sub(r":\d+\)$", ")", frame)


def thread_of(frame: str) -> str:
    name = frame.split(": ", 1)[1] if ": " in frame else frame
    return re.sub(r"\d+", "N", name)


def summarize(path: str) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    thread_ids: dict[str, set[str]] = {}
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    samples = 0
    with open(path) as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                continue
            stack_text, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = stack_text.split(";")
            if frames and frames[0].startswith("thread ("):
                thread = thread_of(frames[0])
                threads[thread] += count
                thread_ids.setdefault(thread, set()).add(frames[0].split(": ", 1)[-1])
                frames = frames[1:]
            samples += count
            if not frames:
                continue
            self_time[function_of(frames[-1])] += count
            for function in {function_of(frame) for frame in frames}:
                total_time[function] += count
            innermost = "other"
            for stage, needles in STAGES:
                if any(needle in frame for frame in frames for needle in needles):
                    inclusive[stage] += count
            for frame in frames:
                for stage, needles in STAGES:
                    if any(needle in frame for needle in needles):
                        innermost = stage
            exclusive[innermost] += count
    return {
        "samples": samples,
        "self": self_time,
        "total": total_time,
        "threads": threads,
        "thread_names": {name: len(ids) for name, ids in thread_ids.items()},
        "inclusive": inclusive,
        "exclusive": exclusive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", metavar="OUT", help="also write the sums as JSON")
    args = parser.parse_args()
    result = summarize(args.path)
    samples = result["samples"] or 1

    def pct(n: int) -> str:
        return f"{100 * n / samples:5.1f}%"

    print(f"{result['samples']} samples in {args.path}")
    print("\nthreads (samples; distinct threads of that name):")
    for name, n in result["threads"].most_common():
        print(f"  {pct(n)} {n:6d}  {name} ({result['thread_names'][name]})")
    print("\nstages, inclusive (a sample counts for every stage in its stack):")
    for stage, _ in STAGES:
        print(f"  {pct(result['inclusive'][stage])}  {stage}")
    print("\nstages, exclusive (each sample to the innermost stage in its stack):")
    for stage, n in result["exclusive"].most_common():
        print(f"  {pct(n)}  {stage}")
    print(f"\ntop {args.top} by self time:")
    for function, n in result["self"].most_common(args.top):
        print(f"  {pct(n)} {n:6d}  {function}")
    print(f"\ntop {args.top} by total time:")
    for function, n in result["total"].most_common(args.top):
        print(f"  {pct(n)} {n:6d}  {function}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {key: dict(value) if isinstance(value, Counter) else value for key, value in result.items()},
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
