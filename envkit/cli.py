"""The ``envkit`` command line: parse options, call one library function, render, exit.

Exit codes (docs/architecture.md, the command-line contract): 0 fine, 1 refused or failed
check, 2 bad input. Library modules are imported inside the commands so that ``envkit --help``
stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, TypeVar

import click

from envkit import __version__
from envkit.entry import FAIL_ON, POLICY_PRESETS, safe_streams
from envkit.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REFUSED, EnvkitError, error_document, os_error_input

F = TypeVar("F", bound=Callable[..., Any])
POLICY_CHOICE = click.Choice(POLICY_PRESETS)


def _emit_json(doc: Any) -> None:
    from envkit.render import json_document

    click.echo(json_document(doc))


def _fail(message: str, exit_code: int, *, as_json: bool) -> NoReturn:
    """The one way a command ends on an error: one line on stderr (and, with --json, one document on stdout)."""
    if as_json:
        _emit_json(error_document(message, exit_code))
    click.echo(f"envkit: error: {message}", err=True)
    sys.exit(exit_code)


def handle_errors(fn: F) -> F:
    """EnvkitError -> one line on stderr and its exit code; an OSError on a path -> the same, exit 2; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except EnvkitError as exc:
            _fail(exc.message, exc.exit_code, as_json=as_json)
        except OSError as exc:  # the safety net: a path the library did not check first
            if isinstance(exc, BrokenPipeError):  # the reader of our output went away: not an input
                raise
            error = os_error_input(exc)
            _fail(error.message, error.exit_code, as_json=as_json)
        except KeyboardInterrupt:
            click.echo("envkit: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _path(**checks: bool) -> click.Path:
    """A path option or argument. Whether it exists and can be read is the library's to say (the same
    words on both command lines), so click checks only file-or-folder where a command asks it to."""
    return click.Path(path_type=Path, readable=False, **checks)


class EnvkitGroup(click.Group):
    """click's group, with usage errors as one line (and a --json document) and exit 2, like every other bad input."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        safe_streams()
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(argv, prog_name or "envkit", standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("envkit: interrupted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "envkit"
            _fail(f"{exc.format_message().rstrip('.')}; see `{where} --help`", EXIT_BAD_INPUT, as_json=as_json)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_BAD_INPUT, as_json=as_json)
        except BrokenPipeError:  # as click's standalone mode does: say nothing more on a closed pipe
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            error = os_error_input(exc)
            _fail(error.message, error.exit_code, as_json=as_json)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=EnvkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="envkit")
def main() -> None:
    """Environments as code, and checkpoints that know where they came from."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the full fingerprint as JSON.")
@click.option("--prefix", type=_path(), help="Fingerprint the environment at this prefix, from its files.")
@click.option("-o", "--output", type=_path(dir_okay=False), help="Write the JSON to this file.")
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
@click.argument("checkpoint", type=_path())
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset (default: the project's, else compatible).")
@click.option("--against", type=_path(), help="Compare with this fingerprint JSON instead of the live environment.")
@click.option("--prefix", type=_path(), help="Compare with the environment installed at this prefix.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="refuse", show_default=True, help="Lowest verdict that exits 1.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option("--verify", "verify_payload", is_flag=True, help="Also re-hash the payload against its stamp; exit 1 if it is corrupt.")
@handle_errors
def check(checkpoint: Path, policy: str | None, against: Path | None, prefix: Path | None, fail_on: str, as_json: bool,
          verify_payload: bool) -> None:
    """May this environment resume CHECKPOINT? Reads the stamp only; never unpickles."""
    # Plain command lines take envkit.entry's click-free path; this one reads the rest.
    from envkit.checkpoint.resume_check import check_against
    from envkit.render import check_output, verify_with_progress

    report = check_against(checkpoint, policy=policy, against=against, prefix=prefix)
    verified = verify_with_progress(checkpoint, report.info, show=not as_json) if verify_payload else None
    click.echo(check_output(report, as_json=as_json, against=against, prefix=prefix, fail_on=fail_on, verified=verified))
    sys.exit(max(report.exit_code(fail_on), verified.exit_code if verified is not None else EXIT_OK))


@main.command()
@click.argument("a")
@click.argument("b", default="live")
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset used to grade the differences.")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as one JSON document.")
@handle_errors
def diff(a: str, b: str, policy: str | None, as_json: bool) -> None:
    """Differences between two environments: each a checkpoint, a fingerprint JSON, or `live`.

    The rows are graded as `check` grades them (--policy, else the project's, else compatible);
    exit 1 when that policy refuses, as `check` does."""
    from envkit.checkpoint.resume_check import compare
    from envkit.render import diff_text

    report = compare(a, b, policy=policy)
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(diff_text(report))
    sys.exit(report.exit_code())


@main.command()
@click.argument("checkpoint", type=_path())
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
@click.argument("checkpoints", nargs=-1, required=True, type=_path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def verify(checkpoints: tuple[Path, ...], as_json: bool) -> None:
    """Re-hash each checkpoint's payload against its stamp.

    Exit 2 if any cannot be read (missing, not a checkpoint), else 1 if any is corrupt, else 0;
    an unstamped file has nothing to verify against: a warning, not corruption (exit 0)."""
    from envkit.checkpoint.integrity import exit_code_of
    from envkit.render import verify_text, verify_with_progress

    results = [verify_with_progress(p, show=not as_json) for p in checkpoints]
    code = exit_code_of(results)
    if as_json:
        _emit_json({"ok": code == EXIT_OK, "exit_code": code, "checkpoints": [r.to_json() for r in results]})
    else:
        for r in results:
            click.echo(verify_text(r), err=r.status == "unreadable")
    sys.exit(code)


@main.command(name="ls")
@click.argument("folder", type=_path())
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


# -- environments (conda) ------------------------------------------------------------

ENGINE_CHOICE = click.Choice(["auto", "rattler", "conda", "mamba", "micromamba"])


def _progress(message: str) -> None:
    click.echo(f"envkit: {message}", err=True)


def _mirrors() -> tuple[tuple[str, str], ...]:
    from envkit.config import load_config

    return load_config().mirrors


@main.command()
@click.option("-f", "--file", "files", multiple=True, type=_path(dir_okay=False), help="Environment file (repeatable; default environment.yml).")
@click.option("-p", "--platform", "platforms", multiple=True, help="Platform to lock (repeatable): linux-64, osx-arm64, win-64, ...")
@click.option("--with-cuda", metavar="VER", help="Assume this CUDA (the __cuda virtual package) when solving, e.g. 11.8. "
              "Default: the spec's own (pytorch-cuda, cuda-version, cudatoolkit, a cuda build string), else none.")
@click.option("--lockfile", type=_path(dir_okay=False), help="Lock file to write or check (default conda-lock.yml next to the spec).")
@click.option("--check", is_flag=True, help="Only check that the lock matches the spec; exit 1 when it is stale.")
@click.option(
    "--engine",
    type=ENGINE_CHOICE,
    default="auto",
    show_default=True,
    help="Accepted so that lock and create take the same options; it does not change the solver. "
    "Locks are always solved by the embedded rattler solver (any platform, no conda needed), "
    "so the lock is the same file whichever engine later installs it with `envkit create`.",
)
@handle_errors
def lock(files: tuple[Path, ...], platforms: tuple[str, ...], with_cuda: str | None, lockfile: Path | None, check: bool, engine: str) -> None:
    """Solve environment.yml for several platforms and write conda-lock.yml.

    The solve is always the embedded rattler solver's; --engine matters to `create` only."""
    specs = files or (Path("environment.yml"),)
    target = lockfile or specs[0].parent / "conda-lock.yml"
    if check:
        from envkit.conda.lock import check_lock

        result = check_lock(specs, target, platforms=platforms, with_cuda=with_cuda)
        if result.fresh:
            click.echo(f"{target}: up to date")
            return
        click.echo(f"{target}: stale", err=True)
        for change in result.changes:
            click.echo(f"  {change}", err=True)
        sys.exit(EXIT_REFUSED)
    from envkit.conda.lock import make_lock

    if engine not in ("auto", "rattler"):
        _progress(f"--engine {engine} applies to `envkit create`; the lock is solved by the embedded rattler solver")
    result = make_lock(specs, target, platforms=platforms, with_cuda=with_cuda, mirrors=_mirrors(), progress=_progress)
    click.echo(f"wrote {result.path} ({', '.join(result.platforms)}; {result.packages} packages)")


@main.command()
@click.argument("file", required=False, type=_path(dir_okay=False))
@click.option("--lockfile", type=_path(dir_okay=False), help="Install exactly this lock (default conda-lock.yml next to FILE).")
@click.option("-n", "--name", help="Environment name (under $ENVKIT_ENVS_DIR, conda's envs dir, or ~/.envkit/envs).")
@click.option("-p", "--prefix", type=_path(file_okay=False), help="Environment folder.")
@click.option("--engine", type=ENGINE_CHOICE, default="auto", show_default=True)
@click.option("--with-cuda", metavar="VER", help="When solving FILE without a lock: assume this CUDA (picks CUDA builds). "
              "Default: the spec's own (pytorch-cuda, cuda-version, cudatoolkit, a cuda build string), else none.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@handle_errors
def create(file: Path | None, lockfile: Path | None, name: str | None, prefix: Path | None, engine: str, with_cuda: str | None, dry_run: bool) -> None:
    """Create an environment from a fresh lock, or from FILE (solved on the fly)."""
    import tempfile

    from envkit.conda.create import create as run_create
    from envkit.conda.create import plan_create
    from envkit.conda.lock import default_cache_dir

    if file is None and lockfile is None and Path("environment.yml").is_file():
        file = Path("environment.yml")
    with tempfile.TemporaryDirectory(prefix="envkit-create-") as scratch:
        plan = plan_create(file, lockfile, name=name, prefix=prefix, engine=engine, with_cuda=with_cuda, mirrors=_mirrors(), scratch=Path(scratch))
        if dry_run:
            click.echo("\n".join(plan.lines()))
            return
        done = run_create(plan, cache_dir=default_cache_dir(), progress=_progress)
    click.echo(f"created {done}")


@main.command()
@click.option("-n", "--name", help="Environment name.")
@click.option("-p", "--prefix", type=_path(file_okay=False), help="Environment folder (default: the active one, $CONDA_PREFIX).")
@click.option("--no-builds", is_flag=True, help="Pin name=version only (portable across platforms).")
@click.option("--from-history", is_flag=True, help="Only what was asked for (the spec envkit created it from, or conda's history).")
@click.option("-o", "--output", type=_path(dir_okay=False), help="Write to this file instead of stdout.")
@handle_errors
def export(name: str | None, prefix: Path | None, no_builds: bool, from_history: bool, output: Path | None) -> None:
    """Write an environment.yml (no `prefix:`) that installs this environment elsewhere."""
    from envkit.conda.export import export_spec
    from envkit.conda.prefixes import active_prefix, resolve_prefix

    if name is None and prefix is None:  # as `conda env export`: the active environment
        prefix = active_prefix("export")
        _progress(f"exporting the active environment {prefix} ($CONDA_PREFIX); pass -n NAME or -p PREFIX for another")
    text = export_spec(resolve_prefix(name, prefix), no_builds=no_builds, from_history=from_history)
    if output is not None:
        _write_text_atomically(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@click.option("-n", "--name", help="Environment name.")
@click.option("-p", "--prefix", type=_path(file_okay=False), help="Environment folder (default: the active one).")
@click.option("--lockfile", type=_path(dir_okay=False), help="Lock to compare with (default: the one it was created from).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def doctor(name: str | None, prefix: Path | None, lockfile: Path | None, as_json: bool) -> None:
    """Missing, extra and changed packages against the lock; a stale lock. Exit 1 on drift."""
    from envkit.conda.doctor import doctor as run_doctor
    from envkit.conda.prefixes import resolve_prefix

    if name is None and prefix is None:
        prefix = Path(os.environ.get("CONDA_PREFIX") or sys.prefix)
    report = run_doctor(resolve_prefix(name, prefix), lockfile)
    if as_json:
        _emit_json(report.to_json())
    elif report.ok:
        click.echo(f"{report.prefix}: matches {report.lockfile} ({report.platform})")
    else:
        click.echo(f"{report.prefix}: {len(report.drift)} difference(s) from {report.lockfile} ({report.platform})")
        for d in report.drift:
            click.echo(f"  {d.line()}")
    sys.exit(EXIT_OK if report.ok else EXIT_REFUSED)


@main.command()
@click.argument("checkpoint", type=_path())
@click.option("-o", "--output", "out_dir", type=_path(), default=Path("."), help="Folder for the files, made when missing (default: here).")
@handle_errors
def recreate(checkpoint: Path, out_dir: Path) -> None:
    """Write the files that rebuild the environment that wrote CHECKPOINT: an @EXPLICIT list and
    environment.yml for a conda environment, a pinned requirements.txt and .python-version for a venv."""
    from envkit.conda.recreate import recreate as run_recreate

    result = run_recreate(checkpoint, out_dir)
    if result.requirements is not None:
        unpinned = f"; {len(result.not_pinned)} left as comments" if result.not_pinned else ""
        click.echo(f"wrote {result.requirements} ({result.pip_packages} pip packages pinned{unpinned})")
        for path in result.files[1:]:
            click.echo(f"wrote {path} (Python {result.python_version})")
        return
    click.echo(f"wrote {result.explicit} ({result.conda_packages} conda packages, {result.platform})")
    click.echo(f"wrote {result.environment}" + (f" ({result.pip_packages} pip packages)" if result.pip_packages else ""))


@main.command()
@click.argument("file", type=_path())
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


def _write_text_atomically(path: Path, text: str, option: str = "-o") -> None:
    from envkit.atomic import atomic_write

    atomic_write(path, text, what=option)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "EXIT_BAD_INPUT"]
