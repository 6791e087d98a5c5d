"""What the CLI prints for tables and store checks (shared by ``tpp adapters`` and ``tpp context``)."""
from __future__ import annotations


def print_table(header: list, rows: list[list]) -> None:
    """A Markdown table with padded columns."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def report_check(results: dict[str, str | None], what: str, how: str) -> int:
    """Print ``REFUSED name: why`` per refused entry and a summary line; exit status 1 if any was refused.
    ``results``: {name: None if it loads, else why not}; e.g. what="sites", how="each loaded as tpp serve would"."""
    for name, reason in results.items():
        if reason:
            print(f"REFUSED {name}: {reason}")
    refused = sum(1 for r in results.values() if r)
    print(f"{len(results) - refused} {what} ok, {refused} refused ({how})")
    return 1 if refused else 0
