"""The exit-code contract (docs/architecture.md), in real processes: a path that cannot be used is exit 2 and
ONE line on stderr naming it and the fix (never a traceback, never exit 1, which means "refused");
with --json, stdout holds one document ``{"error": ..., "exit_code": 2}``. Click usage errors too.

Every bad path here is a real one: a name longer than the file system allows (ENAMETOOLONG), a
loop of symbolic links (ELOOP), a path through a regular file (ENOTDIR), a named pipe and a
character device where a file belongs (a read would block or never end), and a file or folder
the process may not read (EACCES). The tests run as root, and root passes permission bits, so
the EACCES runs drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH with ``setpriv`` first: the
process stays uid 0 but obeys the mode bits like any user.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import make_conda_prefix

ROOT = Path(__file__).resolve().parents[1]
DROP_DAC = ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
SETPRIV = shutil.which("setpriv")


def envkit(*args: str | Path, unprivileged: bool = False, click: bool = False, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m envkit ARGS`` (the console script's entry; ``click=True``: the click command line itself)."""
    entry = ["-c", "import sys; from envkit.cli import main; main()"] if click else ["-m", "envkit"]
    cmd = [sys.executable, *entry, *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        assert SETPRIV is not None
        cmd = [SETPRIV, *DROP_DAC, *cmd]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape", env=full_env,
                          cwd=cwd, timeout=15, check=False)


def assert_bad_input(done: subprocess.CompletedProcess[str], path: str | Path, *, as_json: bool = False) -> str:
    """Exit 2, one line `envkit: error: PATH: what; fix` on stderr, nothing else (or the JSON document)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr, done.stdout)
    line = lines[0]
    assert line.startswith("envkit: error: ") and str(path) in line, line
    assert "; " in line.split(str(path), 1)[1], f"no fix after the path: {line}"
    if as_json:
        assert json.loads(done.stdout) == {"error": line.removeprefix("envkit: error: "), "exit_code": 2}
    else:
        assert done.stdout == ""
    return line


@pytest.fixture
def bad(tmp_path: Path) -> dict[str, Path]:
    """One real path for each way a path can fail."""
    loop_a, loop_b = tmp_path / "loop-a", tmp_path / "loop-b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    device = tmp_path / "zero"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # a copy of /dev/zero: reading it never ends
    locked_file = tmp_path / "locked.pth"
    locked_file.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    locked_file.chmod(0)
    locked_dir = tmp_path / "locked-dir"
    (locked_dir / "conda-meta").mkdir(parents=True)
    locked_dir.chmod(0)
    return {
        "name-too-long": tmp_path / ("x" * 300),
        "symlink-loop": loop_a,
        "through-a-file": a_file / "inside",
        "fifo": fifo,
        "device": device,
        "eacces-file": locked_file,
        "eacces-dir": locked_dir,
    }


@pytest.fixture
def env_prefix(tmp_path: Path) -> Path:
    return make_conda_prefix(tmp_path / "env", [("python", "3.11.4", "h0_0")])


# (command line with {P} for the bad path, the kinds of bad path it takes). {CK}: a stamped checkpoint;
# {ENV}: a conda prefix; {OUT}: a folder. File inputs get the FIFO and the device as well.
PATH_ERRORS = {
    "check": ("check {P}", "file"),
    "check-click": ("check {P}", "file"),
    "check --against": ("check --against {P} {CK}", "file"),
    "check --prefix": ("check --prefix {P} {CK}", "dir"),
    "diff a": ("diff {P} live", "file"),
    "diff b": ("diff {CK} {P}", "file"),
    "inspect": ("inspect {P}", "file"),
    "fingerprint --prefix": ("fingerprint --prefix {P}", "dir"),
    "ls": ("ls {P}", "dir"),
    "lint": ("lint {P}", "file"),
    "lock -f": ("lock -f {P}", "file"),
    "create FILE": ("create {P} -p {OUT}/new --dry-run", "file"),
    "create --lockfile": ("create --lockfile {P} -p {OUT}/new --dry-run", "file"),
    "doctor -p": ("doctor -p {P}", "dir"),
    "doctor --lockfile": ("doctor -p {ENV} --lockfile {P}", "file"),
    "export -p": ("export -p {P}", "dir"),
    "recreate": ("recreate {P} -o {OUT}", "file"),
}
KINDS = {
    "file": ("name-too-long", "symlink-loop", "through-a-file", "fifo", "device", "eacces-file"),
    "dir": ("name-too-long", "symlink-loop", "through-a-file", "eacces-dir"),
}
JSON_COMMANDS = ("check", "check --against", "check --prefix", "diff a", "inspect", "fingerprint --prefix", "ls", "lint", "doctor -p")


def _cases() -> list[tuple[str, str]]:
    return [(command, kind) for command, (_, takes) in PATH_ERRORS.items() for kind in KINDS[takes]]


@pytest.mark.parametrize(("command", "kind"), _cases())
def test_every_bad_input_path_is_one_line_and_exit_2(command: str, kind: str, bad: dict[str, Path], stamped: Path,
                                                      env_prefix: Path, tmp_path: Path) -> None:
    if kind.startswith("eacces") and os.geteuid() == 0 and SETPRIV is None:
        pytest.skip("EACCES as root needs setpriv to drop CAP_DAC_OVERRIDE")
    path = bad[kind]
    template, _ = PATH_ERRORS[command]
    args = template.format(P="\0", CK=stamped, ENV=env_prefix, OUT=tmp_path).split()
    args = [str(path) if a == "\0" else a for a in args]
    as_json = command in JSON_COMMANDS and kind in ("name-too-long", "eacces-file", "eacces-dir")
    if as_json:
        args.insert(1, "--json")
    done = envkit(*args, unprivileged=kind.startswith("eacces"), click=command == "check-click")
    assert_bad_input(done, path, as_json=as_json)


@pytest.mark.parametrize("kind", ["name-too-long", "fifo", "device", "through-a-file"])
def test_output_paths_are_one_line_and_nothing_is_replaced(kind: str, bad: dict[str, Path]) -> None:
    """`-o` at a FIFO or a device used to replace it with a regular file (as root, /dev/null too)."""
    path = bad[kind]
    before = os.lstat(path).st_mode if os.path.lexists(path) else None
    assert_bad_input(envkit("fingerprint", "-o", path), path)
    assert (os.lstat(path).st_mode if os.path.lexists(path) else None) == before


def test_output_through_a_symlink_writes_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    done = envkit("fingerprint", "-o", link)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and json.loads(target.read_text())["schema"] == "envkit.fingerprint/1"


def test_a_path_the_terminal_cannot_encode_is_printed_escaped(stamped: Path, tmp_path: Path) -> None:
    """A file name that is not UTF-8 (b'\\xff') reaches Python as a surrogate; printing it on a
    strict UTF-8 or an ASCII stdout raised UnicodeEncodeError after the verdict, exit 1."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/ck\xff.pth"))
    shutil.copy(stamped, odd)
    for encoding in ("utf-8", "ascii"):
        done = envkit("check", odd, env={"PYTHONIOENCODING": encoding})
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "ck\\udcff.pth" in done.stdout.splitlines()[0]
        assert done.stdout.rstrip().endswith("ok: this environment may resume it")
        missing = envkit("check", odd.with_name("gone\udcff.pth"), env={"PYTHONIOENCODING": encoding})
        assert_bad_input(missing, "gone\\udcff.pth")


USAGE_ERRORS = {
    "missing argument": ["check"],
    "bad choice": ["check", "--policy", "nope", "x.pth"],
    "unknown command": ["nope"],
    "unknown option": ["inspect", "--verbose", "x.pth"],
    "missing value": ["ls", "x", "--policy"],
    "with --json": ["check", "--json"],
    "with --json, bad choice": ["diff", "--json", "--policy", "lenient", "a"],
    "with --json, lint": ["lint", "--json"],
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_usage_errors_are_one_line_and_exit_2(case: str) -> None:
    args = USAGE_ERRORS[case]
    done = envkit(*args)
    assert done.returncode == 2 and "Usage:" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("envkit: error: ") and "--help`" in line, line
    if "--json" in args:
        assert json.loads(done.stdout) == {"error": line.removeprefix("envkit: error: "), "exit_code": 2}
    else:
        assert done.stdout == ""


def test_help_and_version_still_exit_0() -> None:
    assert envkit("--help").returncode == 0
    done = envkit("check", "--help")
    assert done.returncode == 0 and done.stdout.startswith("Usage: envkit check")
    assert envkit("--version").stdout.startswith("envkit, version")
