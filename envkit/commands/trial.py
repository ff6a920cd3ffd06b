"""``envkit trial``: load checkpoints in another environment and compare every tensor."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from envkit.commands import echo, emit_json, handle_errors, path_type


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=path_type())
@click.option("--python", "python", type=path_type(), help="The other environment's interpreter.")
@click.option("--prefix", type=path_type(), help="The other environment's folder (its bin/python).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--trust-pickles", is_flag=True, help="weights_only=False there (numpy objects, ...); globals beyond torch and numpy stay refused.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds each checkpoint may take there.")
@click.option("--memory-limit", type=float, help="The child's address-space cap in GB (default: 4x the largest file + 8 GB; 0: none).")
@handle_errors
def trial(
    checkpoints: tuple[Path, ...], python: Path | None, prefix: Path | None, as_json: bool,
    trust_pickles: bool, timeout: float, memory_limit: float | None,
) -> None:  # fmt: skip
    """Load each checkpoint in another environment (--python or --prefix) and compare every tensor.

    The other interpreter runs torch.load(weights_only=True, map_location="cpu") with -I (no
    envkit needed there) and reports each tensor's dtype, shape and a digest of its bytes;
    envkit compares them with the stamp's storage digests, or, for a checkpoint without them,
    with the same load in this environment. Exit 0 when every checkpoint loads with the same
    values, 1 otherwise, 2 for bad input (a hostile or missing file, no such interpreter, no
    torch there)."""
    from envkit.checkpoint.trial import trial as run_trial
    from envkit.render import trial_text

    limit = None if memory_limit is None else int(memory_limit * (1 << 30))
    report = run_trial(checkpoints, python=python, prefix=prefix, trust_pickles=trust_pickles, timeout=timeout, memory_limit=limit)
    if as_json:
        emit_json(report.to_json())
    else:
        echo(trial_text(report))
    sys.exit(report.exit_code)
