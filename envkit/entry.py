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

# The choices of both command lines (envkit.cli takes them from here; policy.PRESETS is the
# source, repeated so that this module imports nothing: tests/test_entry.py holds them equal).
POLICY_PRESETS = ("strict", "compatible", "warn")
FAIL_ON = ("refuse", "warn")
CHECK_CHOICES = {"--policy": POLICY_PRESETS, "--fail-on": FAIL_ON}
CHECK_PATHS = ("--against", "--prefix")
CHECK_FLAGS = ("--json", "--verify")


def parse_check(args: Sequence[str]) -> dict[str, str | bool] | None:
    """The options of ``envkit check ARGS``, or None for anything click should read instead."""
    options: dict[str, str | bool] = {}
    positional: list[str] = []
    pending: str | None = None
    for arg in args:
        if pending is not None:
            options[pending] = arg
            pending = None
        elif arg in CHECK_FLAGS:
            if arg in options:
                return None
            options[arg] = True
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


def safe_streams() -> None:
    """A path is printed whatever the terminal can encode: what it cannot becomes a backslash
    escape (``\\udcff``) instead of a UnicodeEncodeError after the answer was decided."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def run_check(options: dict[str, str | bool]) -> int:
    """Run a parsed ``envkit check``: print the report, return the exit code."""
    from pathlib import Path

    from envkit.checkpoint.resume_check import check_against
    from envkit.errors import EnvkitError, error_document, os_error_input
    from envkit.render import check_output, json_document, verify_with_progress

    as_json = bool(options.get("--json"))
    against, prefix = (Path(str(options[n])) if isinstance(options.get(n), str) else None for n in CHECK_PATHS)
    checkpoint = Path(str(options["checkpoint"]))
    try:
        report = check_against(
            checkpoint,
            policy=options.get("--policy"),  # type: ignore[arg-type]
            against=against,
            prefix=prefix,
        )
        verified = verify_with_progress(checkpoint, report.info, show=not as_json) if options.get("--verify") else None
    except (EnvkitError, OSError) as exc:
        error = os_error_input(exc) if isinstance(exc, OSError) else exc
        if as_json:
            sys.stdout.write(json_document(error_document(error.message, error.exit_code)) + "\n")
        sys.stderr.write(f"envkit: error: {error.message}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("envkit: interrupted\n")
        return 130
    fail_on = str(options.get("--fail-on", "refuse"))
    sys.stdout.write(check_output(report, as_json=as_json, against=against, prefix=prefix, fail_on=fail_on, verified=verified) + "\n")
    return max(report.exit_code(fail_on), verified.exit_code if verified is not None else 0)


def main() -> None:
    safe_streams()
    args = sys.argv[1:]
    if args[:1] == ["check"]:
        options = parse_check(args[1:])
        if options is not None:
            sys.exit(run_check(options))
    from envkit.cli import main as click_main

    click_main()


if __name__ == "__main__":
    main()
