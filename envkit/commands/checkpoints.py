"""The commands over checkpoints and environments: fingerprint, diff, inspect, verify, ls (read), stamp (a file or a folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from envkit.commands import POLICY_CHOICE, echo, emit_json, handle_errors, location_type, path_type


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the full fingerprint as JSON.")
@click.option("--prefix", type=path_type(), help="Fingerprint the environment at this prefix, from its files.")
@click.option("-o", "--output", type=path_type(dir_okay=False), help="Write the JSON to this file.")
@handle_errors
def fingerprint(as_json: bool, prefix: Path | None, output: Path | None) -> None:
    """Fingerprint the live environment (or the one at --prefix)."""
    from envkit.fingerprint import collect, write_fingerprint
    from envkit.render import fingerprint_text, wrote_text

    fp = collect(prefix)
    if output is not None:
        write_fingerprint(fp, output)
    if as_json:
        emit_json(fp.to_json())
    elif output is not None:
        echo(wrote_text(output, fp.digest))
    else:
        echo(fingerprint_text(fp))


@click.command()
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
        emit_json(report.to_json())
    else:
        echo(diff_text(report))
    sys.exit(report.exit_code())


@click.command()
@click.argument("checkpoint", type=location_type())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def inspect(checkpoint: Path, as_json: bool) -> None:
    """Format, records, storages and stamp of CHECKPOINT, without loading any tensor."""
    from envkit.checkpoint import inspect_checkpoint
    from envkit.render import inspect_text

    result = inspect_checkpoint(checkpoint)
    if as_json:
        emit_json(result.to_json())
    else:
        echo(inspect_text(result))


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=location_type())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def verify(checkpoints: tuple[Path, ...], as_json: bool) -> None:
    """Re-hash each checkpoint's payload against its stamp.

    Exit 2 if any cannot be read (missing, not a checkpoint), else 1 if any is corrupt, else 0;
    an unstamped file has nothing to verify against: a warning, not corruption (exit 0), unless a
    checksum sidecar (CKPT.md5, CKPT.sha256, as md5sum/sha256sum write them) sits beside it."""
    from envkit.checkpoint.integrity import exit_code_of
    from envkit.render import verify_text, verify_with_progress

    results = [verify_with_progress(p, show=not as_json) for p in checkpoints]
    code = exit_code_of(results)
    if as_json:
        emit_json({"ok": code == 0, "exit_code": code, "checkpoints": [r.to_json() for r in results]})
    else:
        for r in results:
            echo(verify_text(r), err=r.status == "unreadable")
    sys.exit(code)


@click.command(name="ls")
@click.argument("folder", type=location_type())
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset for the verdict column.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def ls(folder: Path, policy: str | None, as_json: bool) -> None:
    """One row per checkpoint in FOLDER: epoch, step, metrics, size, valid, environment, verdict here."""
    from envkit.checkpoint.directory import describe_folder
    from envkit.render import folder_text

    rows = describe_folder(folder, policy=policy)
    if as_json:
        emit_json({"folder": str(folder), "checkpoints": [r.to_json() for r in rows]})
    else:
        echo(folder_text(rows))


@click.command()
@click.argument("checkpoint", type=path_type())
@click.option("--restamp", is_flag=True, help="A folder: stamp it again when its files changed since it was stamped.")
@click.option("--framework", help="A folder: the framework that wrote it (default: guessed from its files).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def stamp(checkpoint: Path, restamp: bool, framework: str | None, as_json: bool) -> None:
    """Stamp an existing checkpoint in place: a FOLDER or an unstamped torch FILE.

    A folder (a Hugging Face checkpoint-<step>, an Accelerate save_state folder): every file's
    digest and this environment's fingerprint in FOLDER/envkit.json, written last. One stamped
    already whose files are unchanged is left as it is; one whose files changed is refused
    (exit 1: run `envkit verify` first) unless --restamp.

    A file: adopted atomically. A checksum sidecar beside it (FILE.md5, .sha256) is verified first
    (exit 1 on a mismatch, the file untouched) and rewritten for the new bytes. The stamp records
    this environment, marked adopted: the one that wrote the file is unknown. Exit 2: neither."""
    from envkit.checkpoint.adopt import adopt
    from envkit.checkpoint.folder import stamp_checkpoint_folder
    from envkit.checkpoint.paths import is_folder_checkpoint
    from envkit.errors import BadInput
    from envkit.render import adopt_text, stamp_text

    if is_folder_checkpoint(checkpoint):
        stamped = stamp_checkpoint_folder(checkpoint, framework=framework, replace=restamp, fsync=True)
        document, text = stamped.to_json(), stamp_text(stamped)
    elif restamp or framework:
        raise BadInput(f"{checkpoint}: --restamp and --framework are for checkpoint folders; a file is stamped without them")
    else:
        adopted = adopt(checkpoint)
        document, text = adopted.to_json(), adopt_text(adopted)
    if as_json:
        emit_json(document)
    else:
        echo(text)
