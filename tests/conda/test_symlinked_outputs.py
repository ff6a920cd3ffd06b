"""`envkit lock --lockfile LINK` writes through the link at its target, as every envkit writer does
(issue 10, item 9). Real solver on the real local channel."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from envkit.cli import main
from tests.conda.conftest import write_spec


def test_lock_writes_through_a_symlinked_lockfile(tmp_path: Path, channel: Path) -> None:
    spec = write_spec(tmp_path, channel, "  - python=3.11\n  - numpy\n")
    (tmp_path / "locks").mkdir()
    target = tmp_path / "locks" / "conda-lock.yml"
    target.write_text("stale\n")
    link = tmp_path / "conda-lock.yml"
    link.symlink_to("locks/conda-lock.yml")
    result = CliRunner().invoke(main, ["lock", "-f", str(spec), "-p", "linux-64", "--lockfile", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and "numpy" in target.read_text() and "stale" not in target.read_text()
    assert CliRunner().invoke(main, ["lock", "-f", str(spec), "-p", "linux-64", "--lockfile", str(link), "--check"]).exit_code == 0
    assert [p.name for p in (tmp_path / "locks").iterdir()] == ["conda-lock.yml"]  # no temporary folder left
