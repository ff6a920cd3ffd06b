"""``envkit check``: alone in its module, so that the command run before every resume defines
(and imports) nothing the other commands need."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from envkit.commands import FAIL_ON, POLICY_CHOICE, echo, handle_errors, location_type, path_type


@click.command()
@click.argument("checkpoint", type=location_type())
@click.option("--policy", type=POLICY_CHOICE, help="Policy preset (default: the project's, else compatible).")
@click.option("--against", type=path_type(), help="Compare with this fingerprint JSON instead of the live environment.")
@click.option("--prefix", type=path_type(), help="Compare with the environment installed at this prefix.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="refuse", show_default=True, help="Lowest verdict that exits 1.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option("--verify", "verify_payload", is_flag=True, help="Also re-hash the payload against its stamp; exit 1 if it is corrupt.")
@handle_errors
def check(checkpoint: Path, policy: str | None, against: Path | None, prefix: Path | None, fail_on: str, as_json: bool,
          verify_payload: bool) -> None:
    """May this environment resume CHECKPOINT? Reads the stamp only; never unpickles."""
    from envkit.checkpoint.resume_check import check_against
    from envkit.render import check_output, verify_with_progress

    report = check_against(checkpoint, policy=policy, against=against, prefix=prefix)
    verified = verify_with_progress(checkpoint, report.info, show=not as_json) if verify_payload else None
    echo(check_output(report, as_json=as_json, against=against, prefix=prefix, fail_on=fail_on, verified=verified))
    sys.exit(max(report.exit_code(fail_on), verified.exit_code if verified is not None else 0))
