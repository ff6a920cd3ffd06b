"""The ``envkit`` console script.

``envkit check`` is what people run before every resume, so it has a path that does not
import click (a quarter of that command's start-up). It accepts only the plain forms
of the documented options and hands every other command line, including any it cannot
read with certainty (``--help``, an unknown or repeated option, a missing value), to the
click command line in ``envkit.cli``, which stays the one parser of record. Both paths
call the same library function and the same renderer; ``tests/test_entry.py`` runs a
matrix of command lines through each and compares output and exit codes.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

CHECK_CHOICES = {"--policy": ("strict", "compatible", "warn"), "--fail-on": ("refuse", "warn")}
CHECK_PATHS = ("--against", "--prefix")


def parse_check(args: Sequence[str]) -> dict[str, str | bool] | None:
    """The options of ``envkit check ARGS``, or None for anything click should read instead."""
    options: dict[str, str | bool] = {}
    positional: list[str] = []
    pending: str | None = None
    for arg in args:
        if pending is not None:
            options[pending] = arg
            pending = None
        elif arg == "--json":
            if "--json" in options:
                return None
            options["--json"] = True
        elif arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name not in CHECK_CHOICES and name not in CHECK_PATHS or name in options:
                return None
            if eq:
                options[name] = value
            else:
                pending = name
        else:
            positional.append(arg)
    if pending is not None or len(positional) != 1 or "" in positional or "" in options.values():
        return None
    for name, choices in CHECK_CHOICES.items():
        if name in options and options[name] not in choices:
            return None
    options["checkpoint"] = positional[0]
    return options


def run_check(options: dict[str, str | bool]) -> int:
    """Run a parsed ``envkit check``: print the report, return the exit code."""
    from pathlib import Path

    from envkit.checkpoint.compat import check_against
    from envkit.errors import EnvkitError
    from envkit.render import check_output

    def path(name: str) -> Path | None:
        value = options.get(name)
        return Path(value) if isinstance(value, str) else None

    try:
        report = check_against(
            Path(str(options["checkpoint"])),
            policy=options.get("--policy"),  # type: ignore[arg-type]
            against=path("--against"),
            prefix=path("--prefix"),
        )
    except EnvkitError as exc:
        sys.stderr.write(f"envkit: error: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("envkit: interrupted\n")
        return 130
    sys.stdout.write(check_output(report, as_json=bool(options.get("--json")), against=path("--against"), prefix=path("--prefix")) + "\n")
    return report.exit_code(str(options.get("--fail-on", "refuse")))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["check"]:
        options = parse_check(args[1:])
        if options is not None:
            sys.exit(run_check(options))
    from envkit.cli import main as click_main

    click_main()


if __name__ == "__main__":
    main()
