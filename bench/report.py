"""The one markdown writer of the benchmarks: a document with the results' header, tables, and number formats.

Every ``<benchmark>.md`` is ``document(title, result, *blocks)``: a title, the header bullets (date, commit,
size, machine, versions), then blocks of lines. A table is ``table(head, rows)``: cells are joined here, so
a benchmark says what goes in a row, not how a row is spelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Block = Iterable[str] | str
"""Lines of markdown (or one string), added to a document as they are."""


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` is one letter a column, ``l`` or ``r`` (default: the first left, the rest right).

    Each cell is written with ``str``: ``None`` is an empty cell.
    """
    align = align or "l" + "r" * (len(head) - 1)
    if len(align) != len(head):
        raise ValueError(f"{len(head)} columns, {len(align)} alignments")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    lines = [_row(head), rule]
    for row in rows:
        if len(row) != len(head):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(head)} columns: {row!r}")
        lines.append(_row(row))
    return lines


def pairs(rows: Iterable[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> list[str]:
    """A two-column table of label and value, both left-aligned (``| | |`` when ``head`` is empty)."""
    return table(head, rows, "ll")


def bullets(items: Iterable[Any]) -> list[str]:
    return [f"- {item}" for item in items]


def document(title: str, result: dict[str, Any] | None, *blocks: Block, facts: Iterable[str] = ()) -> str:
    """``# title``, the result's header bullets (none without a result) and ``facts`` as more bullets, then each
    block after a blank line; empty blocks are left out."""
    lines = [f"# {title}", ""]
    head = [*(header_lines(result) if result is not None else []), *bullets(facts)]
    if head:
        lines += [*head, ""]
    for block in blocks:
        block_lines = ([block] if block else []) if isinstance(block, str) else list(block)
        if block_lines:
            lines += [*block_lines, ""]
    return "\n".join(lines)


def header_lines(result: dict[str, Any]) -> list[str]:
    """The markdown bullets for date, commit, size, machine and versions."""
    m, v = result["machine"], result["versions"]
    size = "quick" if result["quick"] else "full"
    dirty = " (tracked files modified)" if result["git_dirty"] else ""
    start, end = m.get("loadavg_start"), m.get("loadavg_end")
    load = f"; load average {start[0]:.2f} -> {end[0]:.2f}" if start and end else ""
    return [
        f"- date (UTC): {result['date_utc']}; commit: `{result['git_commit']}`{dirty}; size: {size}",
        f"- machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}{load}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]


def verdict(passed: bool | None, why: str = "") -> str:
    """``**pass**``, ``**FAIL**: why`` or ``not judged`` (a figure missing)."""
    if passed is None:
        return "not judged"
    return "**pass**" if passed else "**FAIL**" + (f": {why}" if why else "")


STATS = ("p50", "p99", "mean", "max")


def stats_row(label: str, summary: dict[str, Any] | None, fmt: Any, keys: Sequence[str] = STATS) -> list[Any]:
    """``[label, n, fmt(p50), ...]`` from a ``common.summarize`` dict; ``[label, 0, "", ...]`` without one."""
    if summary is None:
        return [label, 0, *("" for _ in keys)]
    return [label, summary["n"], *(fmt(summary[k]) for k in keys)]


def goals_table(goals: dict[str, bool], head: str = "goal") -> list[str]:
    """One row per goal: ``PASS`` or ``FAIL``."""
    return table([head, "result"], [(goal, "PASS" if ok else "FAIL") for goal, ok in goals.items()], "ll")


def na(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted, or ``n/a`` where it was not measured."""
    return "n/a" if value is None else format(value, spec)


def us(value_us: float) -> str:
    """Microseconds as ``83 µs`` or ``2.41 ms``."""
    return f"{value_us:.0f} µs" if value_us < 1000 else f"{value_us / 1000:.2f} ms"


def ms(value_ms: float, digits: int = 2) -> str:
    """Milliseconds as ``2.41 ms`` or ``1.23 s`` (``digits`` decimals below a second)."""
    return f"{value_ms:.{digits}f} ms" if value_ms < 1000 else f"{value_ms / 1000:.2f} s"


def _row(cells: Sequence[Any]) -> str:
    texts = ["" if c is None else str(c) for c in cells]
    return "|" + "|".join(f" {t} " if t else " " for t in texts) + "|"
