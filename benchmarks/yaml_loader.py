"""The bounded YAML loader: cost of an ordinary large file, and of refusing alias bombs.

Variants, each run ``--repeat`` times: median CPU (``time.process_time``), then once more
for the peak traced memory (``tracemalloc``, Python allocations only):

* a contract-like document just under ``MAX_YAML_BYTES`` (1 MiB; a list of small mappings),
  read by ``corral.contracts.load_yaml`` and by PyYAML's ``yaml.load`` with ``SafeLoader``
  (pure Python) and ``CSafeLoader`` (libyaml), the latter two without any of the loader's
  checks or line positions;
* "billion laughs" documents of 6 and 9 levels (each anchor aliases the one before 9 times:
  9**6 = 531,441 and 9**9 = 387,420,489 scalars once expanded), refused by ``load_yaml``. The
  work done is also shown as the number of YAML events consumed before the refusal.

Run: ``python benchmarks/yaml_loader.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import yaml

from corral.contracts import MAX_YAML_BYTES, load_yaml
from corral.contracts._yaml import _BoundedLoader  # to count the events it reads
from corral.errors import InvalidContract


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def large_document() -> str:
    item = "  - {name: tool-%d, description: 'reads one file', tags: [fs, read, safe]}\n"
    parts, size, index = ["items:\n"], 7, 0
    while size + len(item) + 8 < MAX_YAML_BYTES:
        parts.append(item % index)
        size += len(parts[-1])
        index += 1
    return "".join(parts)


def refuse(text: str) -> None:
    try:
        load_yaml(text)
    except InvalidContract:
        return
    raise AssertionError("not refused")


def measure(action: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(median CPU seconds over ``repeat`` runs, peak traced MiB of one more run)."""
    cpu: list[float] = []
    for _ in range(repeat):
        start = time.process_time()
        action()
        cpu.append(time.process_time() - start)
    tracemalloc.start()  # apart: tracing slows allocation-heavy code
    action()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(cpu), peak / 2**20


def events_before_refusal(text: str) -> int:
    """YAML events the loader took from the parser before it refused ``text``."""
    counted = 0
    original = _BoundedLoader.get_event

    def counting(self: _BoundedLoader) -> Any:
        nonlocal counted
        counted += 1
        return original(self)

    _BoundedLoader.get_event = counting  # type: ignore[method-assign]
    try:
        refuse(text)
    finally:
        _BoundedLoader.get_event = original  # type: ignore[method-assign]
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    big = large_document()
    rows = [
        (f"load_yaml, {len(big)} bytes", lambda: load_yaml(big)),
        ("yaml.load SafeLoader (no checks)", lambda: yaml.load(big, Loader=yaml.SafeLoader)),
    ]
    if yaml.__with_libyaml__:
        rows.append(
            ("yaml.load CSafeLoader (no checks)", lambda: yaml.load(big, Loader=yaml.CSafeLoader))
        )
    for levels in (6, 9):
        text = laughs(levels)
        rows.append((f"billion laughs, {levels} levels: refused", lambda t=text: refuse(t)))
    print(f"{'variant':<42} {'CPU s (median)':>15} {'peak MiB':>10}")
    for name, action in rows:
        cpu, peak = measure(action, args.repeat)
        print(f"{name:<42} {cpu:>15.4f} {peak:>10.2f}")
    for levels in (6, 9):
        events = events_before_refusal(laughs(levels))
        print(f"billion laughs, {levels} levels: {events} events read before refusal")


if __name__ == "__main__":
    main()
