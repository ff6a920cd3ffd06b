"""The environment commands (conda): lock, create, export, doctor, recreate, lint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from envkit.commands import (
    echo,
    emit_json,
    handle_errors,
    path_type,
    progress,
)

ENGINE_CHOICE = click.Choice(["auto", "rattler", "conda", "mamba", "micromamba"])
CUDA_DEFAULT = "Default: the spec's own (pytorch-cuda, cuda-version, cudatoolkit, a cuda build string), else none."


def _channel_settings() -> dict[str, Any]:
    """[tool.envkit.mirrors] (and its file), then conda's .condarc settings: how channel names become URLs."""
    from envkit.conda.condarc import load_condarc
    from envkit.config import load_config

    config = load_config()
    return {"mirrors": config.mirrors, "mirrors_from": config.source, "condarc": load_condarc()}


@click.command()
@click.option("-f", "--file", "files", multiple=True, type=path_type(dir_okay=False), help="Environment file (repeatable; default environment.yml).")
@click.option("-p", "--platform", "platforms", multiple=True, help="Platform to lock (repeatable): linux-64, osx-arm64, win-64, ...")
@click.option("--with-cuda", metavar="VER", help="Assume this CUDA (the __cuda virtual package) when solving, e.g. 11.8. " + CUDA_DEFAULT)
@click.option("--lockfile", type=path_type(dir_okay=False), help="Lock file to write or check (default conda-lock.yml next to the spec).")
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
@click.option("-v", "--verbose", is_flag=True, help="Also print each channel's URL and the setting that gave it (.condarc, [tool.envkit.mirrors]).")
@handle_errors
def lock(files: tuple[Path, ...], platforms: tuple[str, ...], with_cuda: str | None, lockfile: Path | None, check: bool, engine: str,
         verbose: bool) -> None:
    """Solve environment.yml for several platforms and write conda-lock.yml.

    The solve is always the embedded rattler solver's; --engine matters to `create` only."""
    from envkit.render import lock_check_text, lock_text

    specs = files or (Path("environment.yml"),)
    if check:
        from envkit.conda.lock import check_lock

        verdict = check_lock(specs, lockfile, platforms=platforms, with_cuda=with_cuda)
        echo(lock_check_text(verdict), err=not verdict.fresh)
        sys.exit(0 if verdict.fresh else 1)
    from envkit.conda.lock import make_lock

    if engine not in ("auto", "rattler"):
        progress(f"--engine {engine} applies to `envkit create`; the lock is solved by the embedded rattler solver")
    result = make_lock(specs, lockfile, platforms=platforms, with_cuda=with_cuda, progress=progress, **_channel_settings())
    echo(lock_text(result, verbose=verbose))


@click.command()
@click.argument("file", required=False, type=path_type(dir_okay=False))
@click.option("--lockfile", type=path_type(dir_okay=False), help="Install exactly this lock (default conda-lock.yml next to FILE).")
@click.option("-n", "--name", help="Environment name (under $ENVKIT_ENVS_DIR, else conda's envs_dirs from .condarc, else conda's envs dir, "
              "else ~/.envkit/envs).")
@click.option("-p", "--prefix", type=path_type(file_okay=False), help="Environment folder.")
@click.option("--engine", type=ENGINE_CHOICE, default="auto", show_default=True)
@click.option("--with-cuda", metavar="VER", help="When solving FILE without a lock: assume this CUDA (picks CUDA builds). " + CUDA_DEFAULT)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Also say which setting gave each channel's URL and the folder of -n NAME.")
@handle_errors
def create(file: Path | None, lockfile: Path | None, name: str | None, prefix: Path | None, engine: str, with_cuda: str | None, dry_run: bool,
           verbose: bool) -> None:
    """Create an environment from a fresh lock, or from FILE (solved on the fly)."""
    from envkit.conda.create import create_environment
    from envkit.render import create_text

    plan = create_environment(file, lockfile, name=name, prefix=prefix, engine=engine, with_cuda=with_cuda, dry_run=dry_run,
                              progress=progress, **_channel_settings())
    echo(create_text(plan, dry_run=dry_run, verbose=verbose))


@click.command()
@click.option("-n", "--name", help="Environment name.")
@click.option("-p", "--prefix", type=path_type(file_okay=False), help="Environment folder (default: the active one, $CONDA_PREFIX).")
@click.option("--no-builds", is_flag=True, help="Pin name=version only (portable across platforms).")
@click.option("--from-history", is_flag=True, help="Only what was asked for (the spec envkit created it from, or conda's history).")
@click.option("-o", "--output", type=path_type(dir_okay=False), help="Write to this file instead of stdout.")
@handle_errors
def export(name: str | None, prefix: Path | None, no_builds: bool, from_history: bool, output: Path | None) -> None:
    """Write an environment.yml (no `prefix:`) that installs this environment elsewhere."""
    from envkit.conda.export import export_environment
    from envkit.render import wrote_text

    text = export_environment(name, prefix, output=output, no_builds=no_builds, from_history=from_history, progress=progress)
    if output is not None:
        echo(wrote_text(output), err=True)
    else:
        echo(text, nl=False)


@click.command()
@click.option("-n", "--name", help="Environment name.")
@click.option("-p", "--prefix", type=path_type(file_okay=False), help="Environment folder (default: the active one).")
@click.option("--lockfile", type=path_type(dir_okay=False), help="Lock to compare with (default: the one it was created from).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def doctor(name: str | None, prefix: Path | None, lockfile: Path | None, as_json: bool) -> None:
    """Missing, extra and changed packages against the lock; a stale lock. Exit 1 on drift."""
    from envkit.conda.doctor import doctor_environment
    from envkit.render import doctor_text

    report = doctor_environment(name, prefix, lockfile)
    if as_json:
        emit_json(report.to_json())
    else:
        echo(doctor_text(report))
    sys.exit(0 if report.ok else 1)


@click.command()
@click.argument("checkpoint", type=path_type())
@click.option("-o", "--output", "out_dir", type=path_type(), default=Path("."), help="Folder for the files, made when missing (default: here).")
@handle_errors
def recreate(checkpoint: Path, out_dir: Path) -> None:
    """Write the files that rebuild the environment that wrote CHECKPOINT: an @EXPLICIT list and
    environment.yml for a conda environment, a pinned requirements.txt and .python-version for a venv."""
    from envkit.conda.recreate import recreate as run_recreate
    from envkit.render import recreate_text

    echo(recreate_text(run_recreate(checkpoint, out_dir)))


@click.command()
@click.argument("file", type=path_type())
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON document.")
@handle_errors
def lint(file: Path, as_json: bool) -> None:
    """Check an environment.yml; exit 1 on errors, 0 with warnings only, 2 if it cannot be read."""
    from envkit.conda.lint import lint as run_lint
    from envkit.render import lint_text

    report = run_lint(file)
    if as_json:
        emit_json(report.to_json())
    else:
        echo(lint_text(report))
    sys.exit(report.exit_code)
