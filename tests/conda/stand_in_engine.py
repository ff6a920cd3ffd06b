"""A stand-in for conda/mamba/micromamba (no real one may be downloaded here).

Installed on PATH under the tool's name, it records its argv, then does what the real
tool does with ``create -y -p PREFIX --file LIST [--offline]`` and an @EXPLICIT list:
checks each package's md5, extracts the files and writes a conda-meta record per
package plus a history file. Only local (file://) URLs are supported.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

SCRIPT = r'''
import hashlib, json, os, sys, tarfile, urllib.parse, urllib.request
from pathlib import Path

tool, argv = Path(sys.argv[0]).name, sys.argv[1:]
with open(os.environ["STAND_IN_LOG"], "a") as fh:
    fh.write(json.dumps([tool, *argv]) + "\n")
if argv == ["--version"]:  # ensureconda (imported by conda-lock) asks this of what it finds
    print("1.5.8" if tool != "conda" else "conda 24.1.2")
    sys.exit(0)
if argv[:1] != ["create"] or "-p" not in argv or "--file" not in argv:
    sys.exit(f"{tool} stand-in: only `create -y -p PREFIX --file LIST` is supported, got {argv}")
prefix = Path(argv[argv.index("-p") + 1])
lines = Path(argv[argv.index("--file") + 1]).read_text().splitlines()
if "@EXPLICIT" not in lines:
    sys.exit(f"{tool} stand-in: not an @EXPLICIT list")
meta = prefix / "conda-meta"
meta.mkdir(parents=True)
for line in lines[lines.index("@EXPLICIT") + 1:]:
    url, _, digest = line.partition("#")
    archive = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    data = archive.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    if digest and digest != md5:
        sys.exit(f"{tool} stand-in: md5 mismatch for {url}")
    if os.environ.get("STAND_IN_FAIL_AFTER_FIRST") and any(meta.glob("*.json")):
        sys.exit(f"{tool} stand-in: failing on purpose at {url}")
    with tarfile.open(archive) as tf:
        index = json.load(tf.extractfile("info/index.json"))
        payload = [m for m in tf.getmembers() if not m.name.startswith("info/")]
        tf.extractall(prefix, members=payload, filter="data")
    record = dict(index, url=url, md5=md5, channel=url.rsplit("/", 2)[0], files=[m.name for m in payload])
    (meta / f"{index['name']}-{index['version']}-{index['build']}.json").write_text(json.dumps(record))
(meta / "history").write_text(f"==> {tool} {' '.join(argv)} <==\n")
'''


def install_stand_ins(bin_dir: Path, *names: str) -> Path:
    """Write an executable stand-in for each of ``names`` into ``bin_dir``; returns bin_dir."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{SCRIPT}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir

