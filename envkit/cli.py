"""The ``envkit`` command line: parse options, call one library function, render, exit.

Exit codes (DESIGN §5): 0 fine, 1 refused or failed check, 2 bad input. Library
modules are imported inside the commands so that ``envkit --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from envkit import __version__
from envkit.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REFUSED, BadInput, EnvkitError

F = TypeVar("F", bound=Callable[..., Any])
POLICY_CHOICE = click.Choice(["strict", "compatible", "warn"])


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def handle_errors(fn: F) -> F:
    """EnvkitError -> one line on stderr and its exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EnvkitError as exc:
            click.echo(f"envkit: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("envkit: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="envkit")
def main() -> None:
    """Environments as code, and checkpoints that know where they came from."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the full fingerprint as JSON.")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="Fingerprint the environment at this prefix, from its files.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON to this file.")
@handle_errors
def fingerprint(as_json: bool, prefix: Path | None, output: Path | None) -> None:
    """Fingerprint the live environment (or the one at --prefix)."""
    from envkit.fingerprint import collect
    from envkit.render import fingerprint_lines, table

    fp = collect(prefix)
    if output is not None:
        _write_text_atomically(output, json.dumps(fp.to_json(), indent=2) + "\n")
    if as_json:
        _emit_json(fp.to_json())
    elif output is not None:
        click.echo(f"wrote {output} ({fp.digest})")
    else:
        click.echo(table(fingerprint_lines(fp), indent=""))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset (default: the project's, else compatible).")
@click.option("--against", type=click.Path(path_type=Path), help="Compare with this fingerprint JSON instead of the live environment.")
@click.option("--prefix", type=click.Path(path_type=Path), help="Compare with the environment installed at this prefix.")
@click.option("--fail-on", type=click.Choice(["refuse", "warn"]), default="refuse", show_default=True, help="Lowest verdict that exits 1.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@handle_errors
def check(checkpoint: Path, policy: str | None, against: Path | None, prefix: Path | None, fail_on: str, as_json: bool) -> None:
    """May this environment resume CHECKPOINT? Reads the stamp only; never unpickles."""
    from envkit.checkpoint import check as run_check
    from envkit.fingerprint import collect, read_fingerprint_file
    from envkit.render import check_text

    if against is not None and prefix is not None:
        raise BadInput("use --against or --prefix, not both")
    live = read_fingerprint_file(against) if against else collect(prefix) if prefix else None
    report = run_check(checkpoint, policy=policy, live=live)
    if as_json:
        _emit_json(report.to_json())
    else:
        label = "against" if against else "prefix" if prefix else "here"
        click.echo(check_text(report, label))
    failing = {"refuse": ("refuse",), "warn": ("refuse", "warn")}[fail_on]
    sys.exit(EXIT_REFUSED if report.verdict in failing else EXIT_OK)


@main.command()
@click.argument("a")
@click.argument("b", default="live")
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset used to grade the differences.")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as one JSON document.")
@handle_errors
def diff(a: str, b: str, policy: str | None, as_json: bool) -> None:
    """Differences between two environments: each a checkpoint, a fingerprint JSON, or `live`."""
    from envkit.checkpoint.compat import compare
    from envkit.render import difference_lines

    report = compare(a, b, policy=policy)
    if as_json:
        _emit_json(report.to_json())
        return
    click.echo(f"{a} -> {b}")
    click.echo("\n".join(difference_lines(report.differences)) if report.differences else "  no differences")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def inspect(checkpoint: Path, as_json: bool) -> None:
    """Format, records, storages and stamp of CHECKPOINT, without loading any tensor."""
    from envkit.checkpoint import inspect_checkpoint
    from envkit.render import inspect_text

    result = inspect_checkpoint(checkpoint)
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo(inspect_text(result))


@main.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def verify(checkpoints: tuple[Path, ...], as_json: bool) -> None:
    """Re-hash each checkpoint's payload against its stamp; exit 1 if any is corrupt."""
    from envkit.checkpoint import verify as run_verify
    from envkit.render import verify_text

    results = [run_verify(p) for p in checkpoints]
    if as_json:
        _emit_json({"ok": all(r.ok for r in results), "checkpoints": [r.to_json() for r in results]})
    else:
        for r in results:
            click.echo(verify_text(r))
    sys.exit(EXIT_OK if all(r.ok for r in results) else EXIT_REFUSED)


@main.command(name="ls")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset for the verdict column.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def ls(folder: Path, policy: str | None, as_json: bool) -> None:
    """One row per checkpoint in FOLDER: epoch, step, metrics, size, valid, environment, verdict here."""
    from envkit.checkpoint.directory import describe_folder
    from envkit.render import folder_text

    rows = describe_folder(folder, policy=policy)
    if as_json:
        _emit_json({"folder": str(folder), "checkpoints": [r.to_json() for r in rows]})
    else:
        click.echo(folder_text(rows))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON document.")
@handle_errors
def lint(file: Path, as_json: bool) -> None:
    """Check an environment.yml; exit 1 on errors, 0 with warnings only, 2 if it cannot be read."""
    from envkit.conda.lint import lint as run_lint

    report = run_lint(file)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(report.to_text())
    sys.exit(report.exit_code)


def _write_text_atomically(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise BadInput(f"{path}: the folder {path.parent} does not exist; create it first")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(f"{path}: cannot write ({exc.strerror}); choose another path") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "EXIT_BAD_INPUT"]
