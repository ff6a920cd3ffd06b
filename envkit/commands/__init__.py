"""What every ``envkit`` command shares: the error contract, option types, JSON output.

The commands live in small modules beside this one (``check`` alone in its own: it is what
people run before every resume) and are imported by name only when ``envkit.cli`` resolves
them, so a command line pays for the command it runs. Each command parses its options,
calls one library function, renders the result with ``envkit.render`` and exits.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from envkit.errors import EnvkitError, error_document, os_error_input

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

# policy.PRESETS, repeated so that defining the options imports no library module
# (tests/test_check_command.py holds them equal)
POLICY_PRESETS = ("strict", "compatible", "warn")
FAIL_ON = ("refuse", "warn")
POLICY_CHOICE = click.Choice(POLICY_PRESETS)


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    """Print ``text`` on stdout (or stderr) as it is: unlike ``click.echo``, which re-wraps an ASCII
    stream with errors="replace", what the stream cannot encode stays a backslash escape
    (``envkit.cli.safe_streams``), so a path that is not UTF-8 is still printed readably."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n" if nl else text)
    stream.flush()


def emit_json(doc: Any) -> None:
    from envkit.render import json_document

    echo(json_document(doc))


def fail(message: str, exit_code: int, *, as_json: bool) -> NoReturn:
    """The one way a command ends on an error: one line on stderr (and, with --json, one document on stdout)."""
    if as_json:
        emit_json(error_document(message, exit_code))
    echo(f"envkit: error: {message}", err=True)
    sys.exit(exit_code)


def progress(message: str) -> None:
    """What a long command says while it works: a line on stderr."""
    echo(f"envkit: {message}", err=True)


def handle_errors(fn: F) -> F:
    """EnvkitError -> one line on stderr and its exit code; an OSError on a path -> the same, exit 2; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except EnvkitError as exc:
            fail(exc.message, exc.exit_code, as_json=as_json)
        except OSError as exc:  # the safety net: a path the library did not check first
            if isinstance(exc, BrokenPipeError):  # the reader of our output went away: not an input
                raise
            error = os_error_input(exc)
            fail(error.message, error.exit_code, as_json=as_json)
        except KeyboardInterrupt:
            echo("envkit: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def path_type(**checks: bool) -> click.Path:
    """A path option or argument. Whether it exists and can be read is the library's to say (in
    its own words), so click checks only file-or-folder where a command asks it to."""
    return click.Path(path_type=Path, readable=False, **checks)


class _Location(click.ParamType):
    name = "path_or_url"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path:
        from envkit.checkpoint.urls import as_location

        return as_location(value)


def location_type() -> click.ParamType:
    """A checkpoint or folder argument that may be a URL (s3://bucket/run/x.pth): a URL stays one."""
    return _Location()
