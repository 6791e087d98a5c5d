"""What the CLI prints for tables and store checks (shared by ``tpp adapters`` and ``tpp context``)."""
from __future__ import annotations

import argparse
import re


def printable(value) -> str:
    """``str(value)`` as a terminal may show it: what a forged card or manifest could hide in it (escape
    sequences, carriage returns, bidirectional overrides) written as ``\\xNN`` / ``\\uNNNN``."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) <= 0xFF else f"\\u{ord(c):04x}"
                   for c in str(value))


def print_table(header: list, rows: list[list]) -> None:
    """A Markdown table with padded columns, every cell :func:`printable`."""
    header, rows = [printable(c) for c in header], [[printable(c) for c in r] for r in rows]
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
            print(f"REFUSED {printable(name)}: {printable(reason)}")
    refused = sum(1 for r in results.values() if r)
    print(f"{len(results) - refused} {what} ok, {refused} refused ({how})")
    return 1 if refused else 0


def add_actions(parser, actions: list, options: dict, aliases: dict | None = None,
                positional_help: dict | None = None) -> None:
    """One sub-command per action of ``parser`` (``tpp adapters``, ``tpp context``): ``actions`` is a list of
    (name, summary, positional metavars, option keys), ``options`` maps a key to (flag, argparse keyword arguments),
    ``positional_help`` a metavar to its help line. The positionals arrive as ``args.path0``, ``args.path1`` ...;
    :func:`action_paths` gives them as a list."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, summary, positionals, keys in actions:
        p = sub.add_parser(name, help=summary, description=summary, aliases=(aliases or {}).get(name, []),
                           epilog=action_examples(parser, name), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", help="show full tracebacks")
        for i, metavar in enumerate(positionals):  # one argument each: a tuple metavar breaks --help
            p.add_argument(f"path{i}", metavar=metavar, help=(positional_help or {}).get(metavar))
        p.set_defaults(positionals=len(positionals), usage_parser=p)  # errors show `tpp adapters ls`'s usage
        for key in keys:
            flag, kwargs = options[key]
            p.add_argument(flag, **kwargs)


def action_examples(parser, action: str) -> str | None:
    """The example lines of ``parser``'s epilog (``tpp adapters --help``'s) that run ``action``, for that action's
    own ``--help`` (None: there are none)."""
    lines = [line for line in (parser.epilog or "").splitlines()
             if re.search(rf"(^|\s){re.escape(parser.prog)} {re.escape(action)}(\s|$)", line)]
    return "examples:\n" + "\n".join(lines) if lines else None


def action_paths(args) -> list[str]:
    """The positionals of an :func:`add_actions` sub-command, in order."""
    return [getattr(args, f"path{i}") for i in range(args.positionals)]
