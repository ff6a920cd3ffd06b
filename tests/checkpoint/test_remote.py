"""Checkpoints on object storage: a real S3 API server (moto's, on 127.0.0.1) and s3fs over HTTP.

Request counts are taken on the server's side (``s3server.S3Server.log``), so they are what a
bucket would bill, whatever the client thinks it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

import envkit  # noqa: E402
from envkit.checkpoint import remote  # noqa: E402
from envkit.checkpoint.listing import ObjectListing  # noqa: E402
from envkit.errors import BadInput, CheckpointDirLocked, CheckpointWriteError  # noqa: E402
from tests.checkpoint.s3server import READONLY_KEY, Proxy, S3Server, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")


def _fs() -> object:
    return remote.filesystem("s3", "s3://any")


def _boto(server: S3Server) -> object:
    import boto3

    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")


def _upload(tmp_path: Path, bucket: str, name: str, state: object, meta: dict[str, object] | None = None) -> str:
    local = tmp_path / name
    envkit.save(state, local, meta=meta or {"epoch": 1, "step": 10})
    _fs().put_file(str(local), f"{bucket}/{name}")  # type: ignore[attr-defined]
    return f"s3://{bucket}/{name}"


def _envkit(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, env=full, cwd=cwd or ROOT,
                          timeout=120)


def _keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    listed = _boto(server).list_objects_v2(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _uploads(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in _boto(server).list_multipart_uploads(Bucket=bucket).get("Uploads", [])]  # type: ignore[attr-defined]


def _gets(server: S3Server, key: str) -> list[object]:
    return [r for r in server.log(key) if r.method == "GET"]


def _model(n: int = 8) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(n, n)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


# -- reads --------------------------------------------------------------------------------


def test_check_of_a_64_mb_checkpoint_costs_one_ranged_get_and_no_download(tmp_path: Path, bucket: str, s3_server: S3Server) -> None:
    url = _upload(tmp_path, bucket, "big.pth", {"w": torch.zeros(16_000_000)})  # 64 MB
    s3_server.reset_log()
    report = envkit.check(url)
    assert report.verdict == "ok" and str(report.checkpoint) == url and report.info.size > 64_000_000
    assert report.info.size == (tmp_path / "big.pth").stat().st_size
    requests = s3_server.log()
    assert [(r.method, r.range) for r in requests] == [("GET", f"bytes=-{remote.TAIL_BYTES}")], requests  # no HEAD, no LIST
    s3_server.reset_log()  # the command line alike, in a process of its own
    done = _envkit("check", url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "ok"
    assert [r.method for r in s3_server.log()] == ["GET"]


def test_check_of_a_checkpoint_whose_directory_outgrows_the_tail_read_costs_one_more_get(tmp_path: Path, bucket: str,
                                                                                          s3_server: S3Server) -> None:
    url = _upload(tmp_path, bucket, "many.pth", {f"t{i}": torch.zeros(1) for i in range(10_000)})  # a 650 KB directory
    s3_server.reset_log()
    assert envkit.read_stamp(url).stamped
    gets = _gets(s3_server, "many.pth")
    assert len(gets) == len(s3_server.log()) == 2  # the tail; the stamp, the version record and the directory's start
    assert sum(r.length or remote.TAIL_BYTES for r in gets) < envkit.read_stamp(url).size / 2


def _answer(location: object) -> tuple[object, ...]:
    """What read_stamp says (the fields check uses), or the class of its refusal."""
    try:
        got = envkit.read_stamp(location)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - the refusal is the answer
        return (type(exc),)
    return got.stamp, got.prefix, got.format, got.serialization_version, got.stamp_source, got.size


def _moved_data_pkl(path: Path, out: Path) -> None:
    """path's records rewritten with data.pkl second (zipfile; the stamp stays last): not torch's layout."""
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        infos = src.infolist()
        for info in [infos[1], infos[0], *infos[2:]]:
            dst.writestr(info, src.read(info))


def test_the_tail_alone_answers_as_the_local_reader_does(tmp_path: Path, bucket: str, s3_server: S3Server) -> None:
    """Objects larger than the tail read (their head is not in it): a stamped checkpoint, and what
    is not one though its tail looks like one; the bucket's answer is the local file's each time."""
    envkit.save({"w": torch.arange(300_000.0)}, tmp_path / "good.pth", meta={"epoch": 1, "step": 3})
    good = (tmp_path / "good.pth").read_bytes()
    torch.save({"w": torch.zeros(300_000)}, tmp_path / "plain.pth")
    _moved_data_pkl(tmp_path / "good.pth", tmp_path / "moved.pth")
    cases = {
        "good": good,
        "junk-before": os.urandom(1_000_000) + good,  # the end records' offsets are not the object's
        "junk-after": good + b"\0" * 100,
        "cut-in-the-middle": good[: len(good) // 2] + good[-remote.TAIL_BYTES :],
        "unstamped": (tmp_path / "plain.pth").read_bytes(),
        "data-pkl-not-first": (tmp_path / "moved.pth").read_bytes(),
    }
    for case, blob in cases.items():
        local = tmp_path / f"{case}.pth"
        local.write_bytes(blob)
        assert len(blob) > 2 * remote.TAIL_BYTES
        _fs().pipe_file(f"{bucket}/{case}.pth", blob)  # type: ignore[attr-defined]
        s3_server.reset_log()
        assert _answer(f"s3://{bucket}/{case}.pth") == _answer(local), case
        if case == "good":
            assert [r.method for r in s3_server.log()] == ["GET"]
    assert _answer(f"s3://{bucket}/good.pth")[0] is not None and len(_answer(f"s3://{bucket}/good.pth")) == 6
    assert _answer(f"s3://{bucket}/junk-before.pth") != _answer(f"s3://{bucket}/good.pth")


def test_check_from_the_tail_leaves_a_damaged_head_to_verify(tmp_path: Path, bucket: str, s3_server: S3Server) -> None:
    """The one thing check's single GET does not read: the object's first bytes. check reads the stamp
    (as it does past any other damaged payload byte); verify streams the payload and says corrupt."""
    envkit.save({"w": torch.arange(300_000.0)}, tmp_path / "h.pth", meta={"epoch": 1, "step": 3})
    blob = bytearray((tmp_path / "h.pth").read_bytes())
    blob[:4] = b"\0\0\0\0"
    _fs().pipe_file(f"{bucket}/h.pth", bytes(blob))  # type: ignore[attr-defined]
    s3_server.reset_log()
    assert envkit.check(f"s3://{bucket}/h.pth").info.stamped and len(s3_server.log()) == 1
    result = envkit.verify(f"s3://{bucket}/h.pth")
    assert result.status == "corrupt", result


def test_verify_streams_the_payload_once_and_finds_a_changed_byte(tmp_path: Path, bucket: str, s3_server: S3Server) -> None:
    url = _upload(tmp_path, bucket, "v.pth", {"w": torch.randn(3_000_000)})
    size = (tmp_path / "v.pth").stat().st_size
    s3_server.reset_log()
    result = envkit.verify(url)
    assert result.ok, result.problem
    fetched = sum(r.length or 0 for r in _gets(s3_server, "v.pth"))
    assert size <= fetched <= size + remote.TAIL_BYTES + remote.HEAD_BYTES  # each payload byte once
    data = bytearray((tmp_path / "v.pth").read_bytes())
    data[size // 2] ^= 0xFF
    _fs().pipe_file(f"{bucket}/v.pth", bytes(data))  # type: ignore[attr-defined]
    changed = envkit.verify(url)
    assert changed.status == "corrupt" and "digest mismatch" in (changed.problem or "")
    done = _envkit("verify", url)
    assert done.returncode == 1 and url in done.stdout + done.stderr


def test_inspect_diff_and_load_take_urls(tmp_path: Path, bucket: str) -> None:
    state = {"w": torch.arange(10.0), "step": 3}
    url = _upload(tmp_path, bucket, "i.pth", state)
    shown = _envkit("inspect", url, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["stamped"] and doc["checkpoint"] == url and doc["top_level"]["w"].startswith("float32")
    assert _envkit("diff", url, "live").returncode == 0
    loaded = envkit.load(url)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3
    assert envkit.guard(url).verdict == "ok"


def test_an_unstamped_or_foreign_object_is_read_as_locally(tmp_path: Path, bucket: str) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pth")
    _fs().put_file(str(tmp_path / "plain.pth"), f"{bucket}/plain.pth")  # type: ignore[attr-defined]
    _fs().pipe_file(f"{bucket}/notes.pth", b"hello")  # type: ignore[attr-defined]
    assert not envkit.read_stamp(f"s3://{bucket}/plain.pth").stamped
    assert envkit.verify(f"s3://{bucket}/plain.pth").status == "unstamped"
    done = _envkit("check", f"s3://{bucket}/notes.pth")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "neither a zip checkpoint" in done.stderr


# -- the manager on a bucket ------------------------------------------------------------------


def test_manager_on_a_bucket_saves_retains_resumes_and_lists_from_the_index(bucket: str, s3_server: S3Server) -> None:
    model, opt = _model()
    url = f"s3://{bucket}/run"
    with envkit.CheckpointManager(url, project="p", keep_last=2) as mgr:
        for step in (1, 2, 3, 4):
            model.weight.data.fill_(float(step))
            assert str(mgr.save(epoch=0, step=step, metrics={"loss": 1.0 / step}, model=model, optimizer=opt)) == \
                f"{url}/p_0000_0000000{step}.pth"
        assert [i.step for i in mgr.list()] == [3, 4]
        with pytest.raises(CheckpointDirLocked, match="another writer holds its lock"):
            envkit.CheckpointManager(url, project="p")
    assert _keys(s3_server, bucket, "run/") == ["run/.envkit-index.json", "run/p_0000_00000003.pth", "run/p_0000_00000004.pth"]
    assert _uploads(s3_server, bucket) == []
    s3_server.reset_log()
    rows = _envkit("ls", url, "--json")
    assert rows.returncode == 0, rows.stderr
    assert [r["step"] for r in json.loads(rows.stdout)["checkpoints"]] == [3, 4]
    assert not [r for r in s3_server.log() if r.path.endswith(".pth")]  # the index, and one LIST: no stamp read
    fresh, _ = _model()
    with envkit.CheckpointManager(url, project="p") as again:
        info = again.resume(model=fresh)
        assert info is not None and info.step == 4 and str(info.path) == f"{url}/p_0000_00000004.pth"
    assert torch.all(fresh.weight == 4.0)


def _bytes_asked(server: S3Server, key: str) -> int:
    """The bytes the GETs of ``key`` asked for (their Range headers; a GET without one: the whole object)."""
    total = 0
    for r in _gets(server, key):
        spec = str(r.range or "").removeprefix("bytes=")  # type: ignore[attr-defined]
        first, _, last = spec.partition("-")
        total += int(last) if not first else (int(last) - int(first) + 1 if last else 1 << 40)
    return total


def test_resume_from_a_bucket_fetches_the_object_once(bucket: str, s3_server: S3Server) -> None:
    """rank 0's verify streams the object; the load takes those bytes (kept in $TMPDIR) instead of fetching it again."""
    model = torch.nn.Linear(1000, 1000)  # 4 MB
    url = f"s3://{bucket}/once"
    with envkit.CheckpointManager(url, project="p") as mgr:
        mgr.save(epoch=0, step=1, model=model)
        with torch.no_grad():
            model.weight.add_(1.0)
        mgr.save(epoch=0, step=2, model=model)
    size = int(_boto(s3_server).head_object(Bucket=bucket, Key="once/p_0000_00000002.pth")["ContentLength"])  # type: ignore[attr-defined]
    s3_server.reset_log()
    fresh = torch.nn.Linear(1000, 1000)
    with envkit.CheckpointManager(url, project="p") as again:
        assert again.resume(model=fresh).step == 2  # type: ignore[union-attr]
    assert torch.equal(fresh.weight, model.weight)
    asked = _bytes_asked(s3_server, "p_0000_00000002.pth")
    assert size <= asked < size + 2 * remote.TAIL_BYTES, (asked, size)  # once, plus the tail read (twice: before, ~2x)
    assert not [r for r in s3_server.log() if r.method == "HEAD"]
    assert not list(Path(tempfile.gettempdir()).glob("envkit-resume-*"))  # the copy is gone once loaded


def test_resume_past_a_corrupt_newest_object_loads_the_one_that_verified(bucket: str, s3_server: S3Server) -> None:
    model = torch.nn.Linear(300, 300)
    url = f"s3://{bucket}/past"
    with envkit.CheckpointManager(url, project="p") as mgr:
        mgr.save(epoch=0, step=1, model=model)
        older = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        mgr.save(epoch=0, step=2, model=model)
    client = _boto(s3_server)
    key = "past/p_0000_00000002.pth"
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[attr-defined]
    data[len(data) // 2] ^= 0xFF  # one byte of the payload, the size unchanged
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))  # type: ignore[attr-defined]
    fresh = torch.nn.Linear(300, 300)
    with envkit.CheckpointManager(url, project="p") as again, pytest.warns(envkit.CheckpointSkippedWarning):
        assert again.resume(model=fresh).step == 1  # type: ignore[union-attr]
    assert torch.equal(fresh.weight, older)  # the copy of the corrupt one was replaced by the one that verified


@pytest.mark.parametrize("name", ["v.pth", "v.safetensors"])
def test_verify_with_a_copy_keeps_the_objects_bytes_exactly(tmp_path: Path, bucket: str, name: str) -> None:
    from envkit.checkpoint.integrity import verify
    from envkit.checkpoint.remote_verify import VerifiedCopy

    if name.endswith(".safetensors"):
        pytest.importorskip("safetensors")
    local = tmp_path / name
    envkit.save({"a": torch.arange(50_000.0), "b": torch.ones(3, dtype=torch.int64)}, local)
    url = f"s3://{bucket}/{name}"
    _fs().put_file(str(local), f"{bucket}/{name}")  # type: ignore[attr-defined]
    copy = VerifiedCopy(tmp_path / "kept")
    copy.folder.mkdir()
    assert verify(url, copy=copy).ok
    assert str(copy.holds) == url and copy.path is not None and copy.path.read_bytes() == local.read_bytes()
    broken = bytearray(local.read_bytes())
    broken[-len(broken) // 3] ^= 0x01
    _fs().pipe_file(f"{bucket}/{name}", bytes(broken))  # type: ignore[attr-defined]
    assert verify(url, copy=copy).status == "corrupt"
    assert copy.holds is None


def test_a_copy_the_disk_refuses_is_only_a_lost_saving(tmp_path: Path, bucket: str) -> None:
    """The copy's file is /dev/full (every write fails with ENOSPC): verify still answers ok, and holds nothing."""
    from envkit.checkpoint.integrity import verify
    from envkit.checkpoint.remote_verify import VerifiedCopy

    url = _upload(tmp_path, bucket, "full.pth", {"w": torch.ones(1000)})
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "full.pth").symlink_to("/dev/full")
    copy = VerifiedCopy(kept)
    assert verify(url, copy=copy).ok
    assert copy.failed and copy.holds is None


def test_a_save_that_fails_mid_upload_leaves_no_object_and_no_upload(bucket: str, s3_server: S3Server,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure is injected into the client (the third part's upload raises); the server is real."""
    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    model = torch.nn.Linear(1500, 1500)  # 9 MB: two parts
    url = f"s3://{bucket}/run"
    with envkit.CheckpointManager(url, project="p") as mgr:
        mgr.save(epoch=0, step=1, model=model)
        with monkeypatch.context() as patched:
            drop_the_connection_at_part(patched, 2)
            with pytest.raises(CheckpointWriteError, match="nothing was left under that key"):
                mgr.save(epoch=0, step=2, model=model)
        assert _keys(s3_server, bucket, "run/p_") == ["run/p_0000_00000001.pth"]
        assert _uploads(s3_server, bucket) == []  # aborted, not left to bill
        latest = mgr.latest()
        assert latest is not None and latest.step == 1



def drop_the_connection_at_part(patch: pytest.MonkeyPatch, n: int) -> None:
    """From here on, s3fs's upload of the n-th part of any object fails as a dropped connection would."""
    import s3fs

    real, calls = s3fs.core.S3File._upload_chunk, []

    def failing(self: object, final: bool = False) -> object:
        calls.append(final)
        if len(calls) == n:
            raise ConnectionResetError("injected: the connection dropped")
        return real(self, final)

    patch.setattr(s3fs.core.S3File, "_upload_chunk", failing)


def test_killing_the_server_mid_multipart_upload_keeps_the_previous_checkpoint(bucket: str, s3_server: S3Server,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The client talks to the server through a proxy process; kill -9 of it is the server dying mid-upload."""
    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    proxy = Proxy(s3_server.port)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    model = torch.nn.Linear(2500, 2500)  # 25 MB: five parts
    url = f"s3://{bucket}/run"
    try:
        mgr = envkit.CheckpointManager(url, project="p")
        mgr.save(epoch=0, step=1, model=model)
        s3_server.reset_log()

        def kill_at_the_second_part() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("partNumber=2" in r.query for r in s3_server.log("p_0000_00000002.pth")):
                time.sleep(0.002)
            proxy.kill()

        killer = threading.Thread(target=kill_at_the_second_part, daemon=True)
        killer.start()
        with pytest.raises(CheckpointWriteError):
            mgr.save(epoch=0, step=2, model=model)
        killer.join(30)
        assert _keys(s3_server, bucket, "run/p_") == ["run/p_0000_00000001.pth"]  # asked of the server itself
        assert _uploads(s3_server, bucket) != []  # the dead server could not be told to abort it
        proxy.start()  # the server is back, with what it had stored
        latest = mgr.latest()
        assert latest is not None and latest.step == 1 and envkit.verify(latest.path).ok
        mgr.close()
        with envkit.CheckpointManager(url, project="p") as again:  # a new writer aborts the dead upload
            assert _uploads(s3_server, bucket) == []
            assert again.resume(model=model).step == 1  # type: ignore[union-attr]
            again.save(epoch=0, step=2, model=model)
            assert again.latest().step == 2  # type: ignore[union-attr]
    finally:
        proxy.kill()


def test_a_lock_left_by_a_dead_writer_of_this_host_is_broken(bucket: str, s3_server: S3Server) -> None:
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    doc = {"host": socket.gethostname(), "pid": int(dead), "since": time.time() - 60, "token": "x"}
    _fs().pipe_file(f"{bucket}/run/.envkit-lock", json.dumps(doc).encode())  # type: ignore[attr-defined]
    with envkit.CheckpointManager(f"s3://{bucket}/run", project="p") as mgr:
        assert mgr.latest() is None
    doc["host"] = "another-host"
    _fs().pipe_file(f"{bucket}/run/.envkit-lock", json.dumps(doc).encode())  # type: ignore[attr-defined]
    with pytest.raises(CheckpointDirLocked, match="host another-host.*delete s3://.*/run/.envkit-lock"):
        envkit.CheckpointManager(f"s3://{bucket}/run", project="p")


# -- faults ---------------------------------------------------------------------------------


def _one_line_exit_2(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_missing_bucket_is_bad_input(bucket: str) -> None:
    _one_line_exit_2(_envkit("check", "s3://no-such-bucket-envkit/x.pth"), "no-such-bucket-envkit", "does not exist")
    _one_line_exit_2(_envkit("ls", "s3://no-such-bucket-envkit/run"), "does not exist")
    with pytest.raises(BadInput, match="does not exist"):
        envkit.CheckpointManager("s3://no-such-bucket-envkit/run")
    _one_line_exit_2(_envkit("verify", f"s3://{bucket}/missing.pth"), "no such object")


def test_no_credentials_says_what_to_set(tmp_path: Path, bucket: str) -> None:
    url = _upload(tmp_path, bucket, "c.pth", {"w": torch.ones(2)})
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = subprocess.run([sys.executable, "-m", "envkit", "check", url], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    _one_line_exit_2(done, "no credentials", "AWS_ACCESS_KEY_ID")


def test_a_denied_write_is_one_line_and_leaves_nothing(tmp_path: Path, bucket: str, s3_server: S3Server,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server denies writes for the key ``readonly`` (moto enforces no IAM policy by default)."""
    url = _upload(tmp_path, bucket, "r.pth", {"w": torch.ones(2)})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READONLY_KEY)
    assert envkit.check(url).verdict == "ok"  # reads are allowed
    with pytest.raises(BadInput, match="access denied to write"):
        envkit.CheckpointManager(f"s3://{bucket}/run", project="p")
    assert _keys(s3_server, bucket, "run/") == []


def test_an_endpoint_that_does_not_answer_fails_within_the_configured_timeout(tmp_path: Path, bucket: str) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections in the kernel, never answers
    try:
        (tmp_path / "pyproject.toml").write_text("[tool.envkit.storage]\nconnect_timeout = 1\nread_timeout = 1\nretries = 0\n")
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        done = _envkit("check", f"s3://{bucket}/x.pth", env={"AWS_ENDPOINT_URL": endpoint}, cwd=tmp_path)
        _one_line_exit_2(done, endpoint, "did not answer", "read_timeout 1")
    finally:
        silent.close()
    port = free_port()  # nothing listening at all
    done = _envkit("check", f"s3://{bucket}/x.pth", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}, cwd=tmp_path)
    _one_line_exit_2(done, "did not answer")


def test_without_fsspec_a_url_names_the_extra_to_install(bucket: str) -> None:
    code = "import sys; sys.modules['fsspec'] = None; from envkit.cli import main; sys.argv = ['envkit', 'check', 's3://b/x.pth']; main()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          cwd=ROOT, timeout=120)
    _one_line_exit_2(done, "pip install 'envkit[s3]'")


def test_storage_settings_are_validated(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.envkit.storage]\nread_timout = 3\n')
    _one_line_exit_2(_envkit("check", "s3://bucket/x.pth", cwd=tmp_path), "read_timout", "did you mean 'read_timeout'")
    (tmp_path / "pyproject.toml").write_text('[tool.envkit.storage]\nconnect_timeout = 0\n')
    _one_line_exit_2(_envkit("check", "s3://bucket/x.pth", cwd=tmp_path), "connect_timeout = 0")


def test_a_local_path_and_a_file_url_stay_on_the_local_code_path(tmp_path: Path) -> None:
    envkit.save({"w": torch.ones(2)}, tmp_path / "x.pth")
    code = ("import sys, envkit; envkit.check(sys.argv[1]); envkit.verify(sys.argv[1]); "
            "print('fsspec' in sys.modules, 'envkit.checkpoint.remote' in sys.modules)")
    for where in (str(tmp_path / "x.pth"), (tmp_path / "x.pth").as_uri()):
        done = subprocess.run([sys.executable, "-c", code, where], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.stdout.split() == ["False", "False"], done.stderr


# -- kill -9 against the bucket ---------------------------------------------------------------


def _save_forever(url: str, model: torch.nn.Module, ready: object = None) -> None:
    """Child: save as fast as it can until killed (no tensor math after fork); ``ready`` is set
    once its manager holds the lock, so that the kill's random moment falls among the saves."""
    warnings.simplefilter("ignore")
    mgr = envkit.CheckpointManager(url, project="stress", keep_last=2, keep_best=0)
    latest = mgr.latest()
    step = latest.step if latest else 0
    if ready is not None:
        ready.set()  # type: ignore[attr-defined]
    while True:
        step += 1
        mgr.save(epoch=0, step=step, model=model)


def assert_prefix_whole(url: str) -> int:
    """Every object under a final name verifies; latest() verifies and loads with the step it claims."""
    listing = ObjectListing.for_url(url)
    for name in listing.committed_sizes():
        result = envkit.verify(listing.location(name))
        assert result.ok, result.problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mgr = envkit.CheckpointManager(url, project="stress")
    try:
        latest = mgr.latest()
        assert latest is not None and latest.valid
        assert envkit.load(latest.path)["step"] == latest.step
        return int(latest.step)  # type: ignore[arg-type]
    finally:
        mgr.close()


def kill_loop(url: str, kills: int, *, seed: int, max_delay: float, report: object = None,
              saver: Callable[..., None] | None = None) -> int:
    """Fork ``saver(url, model, ready)`` (default ``_save_forever``) and SIGKILL it at a random moment, ``kills``
    times; after each, the prefix is whole and latest() never goes back. Returns the last latest step."""
    import multiprocessing
    import random
    import signal

    rng = random.Random(seed)
    torch.manual_seed(0)
    model = torch.nn.Linear(1300, 1300)  # 6.8 MB: a two-part upload
    ctx = multiprocessing.get_context("fork")
    last = 0
    for kill in range(1, kills + 1):
        ready = ctx.Event()
        child = ctx.Process(target=saver or _save_forever, args=(url, model, ready), daemon=True)
        child.start()
        # the moment is drawn from when the child starts saving: its start-up (a client, the lock, the
        # listing; ~0.35 s here) is no part of it, else on a slower machine no save completes at all
        ready.wait(60)
        time.sleep(rng.random() * max_delay)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
        if ObjectListing.for_url(url).committed_sizes():
            step = assert_prefix_whole(url)
            assert step >= last, f"latest() went back from step {last} to {step}"
            last = step
        if report is not None:
            report(kill, last)  # type: ignore[operator]
    return last


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_at_random_moments_against_the_bucket(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    last = kill_loop(f"s3://{bucket}/stress", 50, seed=1, max_delay=0.5)
    assert last > 0  # saves completed, and none was lost


def test_envkit_save_to_a_url_appears_whole_and_reads_back(bucket: str, s3_server: S3Server) -> None:
    url = f"s3://{bucket}/saved.pth"
    stamp = envkit.save({"w": torch.arange(4.0)}, url, meta={"epoch": 2, "step": 5})
    assert envkit.read_stamp(url).stamp.meta["step"] == 5 and stamp.payload is not None  # type: ignore[union-attr]
    assert envkit.verify(url).ok and torch.equal(envkit.load(url)["w"], torch.arange(4.0))
    assert _keys(s3_server, bucket) == ["saved.pth"] and _uploads(s3_server, bucket) == []


def test_other_fsspec_file_systems_read_without_the_size_in_the_answer(tmp_path: Path) -> None:
    """memory://: fsspec's cat_file, no Content-Range; the size from the end records, the head read as before."""
    for name, state in (("m.pth", {"w": torch.arange(300_000.0)}), ("m.safetensors", {"w": torch.arange(300_000.0)})):
        url = f"memory://envkit-{os.getpid()}/{name}"
        stamp = envkit.save(state, url, meta={"epoch": 0, "step": 4})
        info = envkit.read_stamp(url)
        assert info.stamp == stamp and info.size > 2 * remote.TAIL_BYTES
        assert envkit.verify(url).ok and torch.equal(envkit.load(url)["w"], state["w"])
        import fsspec

        fsspec.filesystem("memory").rm(url)


@pytest.mark.parametrize("name", ["x.pth", "x.safetensors"])
def test_envkit_save_to_a_missing_bucket_is_one_line_naming_the_bucket(bucket: str, name: str) -> None:
    """s3fs raises FileNotFoundError from botocore's NoSuchBucket when the upload starts: one line, no botocore error."""
    with pytest.raises(CheckpointWriteError, match="the bucket 'no-such-bucket' does not exist") as raised:
        envkit.save({"w": torch.zeros(3)}, f"s3://no-such-bucket/{name}")
    assert "\n" not in str(raised.value) and "nothing was left under that key" in str(raised.value)
