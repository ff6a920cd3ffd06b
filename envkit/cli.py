"""The ``envkit`` command line (the console script): one click group over the library.

Exit codes (docs/architecture.md): 0 fine, 1 refused or failed check, 2 bad input, usage
errors included. Commands are resolved by name (click's lazy group): each lives in
``envkit.commands`` and is imported only when it runs or ``--help`` lists it, so that
``envkit check`` pays for click and check alone (``benchmarks/startup.sh`` measures it).
"""

from __future__ import annotations

import gc

# Start-up imports ~150 modules: many long-lived objects and next to no garbage, and at Python's
# default threshold (700 allocations) the collector walks them ~30 times before `check` has read
# a byte (a tenth of its run). The command line runs with a higher first threshold, set before
# click is imported; cycles are still collected. main(args) restores the caller's on the way out.
_CALLER_GC_THRESHOLD = gc.get_threshold()
gc.set_threshold(max(_CALLER_GC_THRESHOLD[0], 50_000), *_CALLER_GC_THRESHOLD[1:])

import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from envkit import __version__  # noqa: E402
from envkit.commands import echo, fail  # noqa: E402
from envkit.errors import EXIT_BAD_INPUT, EXIT_OK, os_error_input  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# name -> "module:attribute" of the click command; `envkit --help` lists them all
COMMANDS = {
    "check": "envkit.commands.check:check",
    "diff": "envkit.commands.checkpoints:diff",
    "fingerprint": "envkit.commands.checkpoints:fingerprint",
    "inspect": "envkit.commands.checkpoints:inspect",
    "ls": "envkit.commands.checkpoints:ls",
    "stamp": "envkit.commands.checkpoints:stamp",
    "verify": "envkit.commands.checkpoints:verify",
    "create": "envkit.commands.environments:create",
    "doctor": "envkit.commands.environments:doctor",
    "export": "envkit.commands.environments:export",
    "lint": "envkit.commands.environments:lint",
    "lock": "envkit.commands.environments:lock",
    "recreate": "envkit.commands.environments:recreate",
}


def safe_streams() -> None:
    """A path is printed whatever the terminal can encode: what it cannot becomes a backslash
    escape (``\\udcff``) instead of a UnicodeEncodeError after the answer was decided."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


class EnvkitGroup(click.Group):
    """click's group, with its commands imported by name when used, and usage errors as one line
    (and a --json document) with exit 2, like every other bad input."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return self.commands.get(cmd_name)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        safe_streams()
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(argv, prog_name or "envkit", standalone_mode=False, **extra)
        except click.exceptions.Abort:
            echo("envkit: interrupted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "envkit"
            fail(f"{exc.format_message().rstrip('.')}; see `{where} --help`", EXIT_BAD_INPUT, as_json=as_json)
        except click.ClickException as exc:
            fail(exc.format_message(), EXIT_BAD_INPUT, as_json=as_json)
        except BrokenPipeError:  # as click's standalone mode does: say nothing more on a closed pipe
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except OSError:
                pass
            sys.exit(1)
        except OSError as exc:
            error = os_error_input(exc)
            fail(error.message, error.exit_code, as_json=as_json)
        finally:
            if args is not None:  # a caller in the same process (click's test runner) gets its own back;
                gc.set_threshold(*_CALLER_GC_THRESHOLD)  # the console script exits instead (no 5 ms collection)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=EnvkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="envkit")
def main() -> None:
    """Environments as code, and checkpoints that know where they came from."""


if __name__ == "__main__":  # pragma: no cover
    main()
