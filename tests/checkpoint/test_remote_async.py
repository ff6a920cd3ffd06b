"""Background saves to a bucket (``CheckpointManager("s3://...", async_save=True)``): moto's S3 server on 127.0.0.1,
s3fs over HTTP, real threads, signals and processes.

Where a test must know what happens while an upload is in flight, the background thread is held at a gate
inside s3fs's own upload (``S3File._upload_chunk``, the part uploads, or ``S3File.commit``, the completion);
what reached the bucket is asked of the server itself (its request log, its listing of objects and of
incomplete multipart uploads). Nothing here asserts on time.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")

import envkit  # noqa: E402
from envkit.checkpoint import remote  # noqa: E402
from envkit.checkpoint.bucket import ObjectStorage  # noqa: E402
from envkit.checkpoint.listing import ObjectListing  # noqa: E402
from envkit.errors import CheckpointWriteError, EnvkitError  # noqa: E402
from tests.checkpoint.s3server import READONLY_KEY, Proxy, S3Server  # noqa: E402
from tests.checkpoint.test_async_save import snapshot, step, trained  # noqa: E402
from tests.checkpoint.test_remote import _keys, _uploads, kill_loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GATE_TIMEOUT_S = 60  # a gate never opened fails the test instead of hanging it

pytestmark = [
    pytest.mark.filterwarnings("ignore::envkit.errors.EphemeralDirectoryWarning"),
    pytest.mark.filterwarnings("error::envkit.errors.BackgroundSaveWarning"),  # "cannot save in the background" fails a test
]


class UploadGate:
    """Holds the upload of one key inside s3fs: before its ``part``-th part upload (1 = the first), or before its
    completion (``part=None``). It refuses to hold the caller's thread: a save that uploads there has not returned."""

    def __init__(self, key: str, part: int | None) -> None:
        self.key, self.part = key, part
        self.log: list[str] = []
        self.reached, self.opened = threading.Event(), threading.Event()
        self._chunks = 0

    def open(self) -> None:
        self.opened.set()

    def _hold(self, what: str) -> None:
        thread = threading.current_thread()
        self.log.append(f"{what} on {thread.name}")
        if thread is threading.main_thread():
            self.opened.set()  # nothing to wait for: the caller is the one uploading
            raise AssertionError(f"{what} of {self.key} ran on the caller's thread: save() did not return before the upload")
        self.reached.set()
        if not self.opened.wait(GATE_TIMEOUT_S):
            raise AssertionError("the gate was never opened")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_chunk, real_commit = s3fs.core.S3File._upload_chunk, s3fs.core.S3File.commit

        def chunk(file: Any, final: bool = False) -> Any:
            if file.path.endswith(self.key):
                self._chunks += 1
                if self._chunks == self.part:
                    self._hold(f"part {self._chunks}")
            return real_chunk(file, final)

        def commit(file: Any) -> Any:
            if file.path.endswith(self.key) and self.part is None:
                self._hold("complete")
            out = real_commit(file)
            if file.path.endswith(self.key):
                self.log.append(f"completed on {threading.current_thread().name}")
            return out

        monkeypatch.setattr(s3fs.core.S3File, "_upload_chunk", chunk)
        monkeypatch.setattr(s3fs.core.S3File, "commit", commit)


@pytest.fixture
def gate_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., UploadGate]]:
    made: list[UploadGate] = []

    def make(key: str, part: int | None = 1) -> UploadGate:
        gate = UploadGate(key, part)
        gate.install(monkeypatch)
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.open()


def _requests(server: S3Server, key: str) -> list[str]:
    """What the server was asked about ``key``: CreateMultipartUpload, UploadPart, Complete, Abort, PUT, HEAD, GET."""
    names = []
    for r in server.log(key):
        if r.method == "POST":
            names.append("create" if r.query.startswith("uploads") else "complete" if "uploadId=" in r.query else "post")
        elif r.method == "PUT":
            names.append("part" if "partNumber=" in r.query else "put")
        elif r.method == "DELETE":
            names.append("abort" if "uploadId=" in r.query else "delete")
        else:
            names.append(r.method.lower())
    return names


def _object(bucket: str, key: str) -> dict[str, Any]:
    fs = remote.filesystem("s3", f"s3://{bucket}")
    data = fs.cat_file(f"{bucket}/{key}")
    return torch.load(io.BytesIO(data), weights_only=True)  # type: ignore[no-any-return]


def _assert_holds(url: Path, bucket: str, expected: dict[str, Any]) -> None:
    assert envkit.verify(url).ok
    state = _object(bucket, str(url).split(f"s3://{bucket}/", 1)[1])
    for key, tensor in expected["model"].items():
        assert torch.equal(state["model"][key], tensor), key
    for index, saved in expected["optimizer"].items():
        for key, value in saved.items():
            got = state["optimizer"]["state"][index][key]
            assert torch.equal(got, value) if torch.is_tensor(value) else got == value, (index, key)
    assert torch.equal(state["rng"]["torch"], expected["torch_rng"])
    version, internal, gauss = expected["python_rng"]
    assert state["rng"]["python"] == [version, list(internal), gauss]


# -- save() returns once staged; the upload runs in the background --------------------------


def test_save_returns_before_the_upload_completes_and_the_object_holds_the_state_of_save_time(
        bucket: str, s3_server: S3Server, gate_for: Callable[..., UploadGate]) -> None:
    model, opt = trained()
    url = f"s3://{bucket}/run"
    gate = gate_for("run/p_0000_00000001.pth", part=1)
    with envkit.CheckpointManager(url, project="p", async_save=True, keep_last=None) as mgr:
        s3_server.reset_log()
        first = mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        expected_first = snapshot(model, opt)
        assert str(first) == f"{url}/p_0000_00000001.pth"
        assert gate.reached.wait(GATE_TIMEOUT_S)  # the background thread is uploading, held before its first part ...
        assert _requests(s3_server, "p_0000_00000001.pth") == ["create"]  # ... the server saw the upload begin, no part
        assert _keys(s3_server, bucket, "run/p_") == [] and mgr.latest() is None  # and nothing is listed yet
        step(model, opt)  # the loop changes everything at once: weights, Adam's moments and step, the RNG
        with torch.no_grad():
            model[0].weight.fill_(1e6)
        random.random()
        gate.open()
        assert mgr.wait() == first
        assert _requests(s3_server, "p_0000_00000001.pth")[:3] == ["create", "part", "complete"]
        _assert_holds(first, bucket, expected_first)  # what landed is the copy save() staged, not the changed model
        second = mgr.save(epoch=0, step=2, model=model, optimizer=opt)  # the staging buffers are reused ...
        expected_second = snapshot(model, opt)
        step(model, opt)
        assert mgr.wait() == second
        _assert_holds(second, bucket, expected_second)  # ... and each save holds its own state
        _assert_holds(first, bucket, expected_first)
        assert [i.step for i in mgr.list()] == [1, 2] and mgr.latest().step == 2  # type: ignore[union-attr]
    assert gate.log[0].startswith("part 1 on envkit-save") and gate.log[-1].startswith("completed on envkit-save")
    assert _uploads(s3_server, bucket) == []


def test_retention_and_the_index_run_on_the_callers_thread_when_a_save_is_collected(
        bucket: str, s3_server: S3Server, gate_for: Callable[..., UploadGate], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    for name in ("delete", "write_index_bytes"):
        real = getattr(ObjectStorage, name)

        def spied(self: ObjectStorage, *args: Any, real: Any = real, name: str = name) -> Any:
            seen.append(f"{name} on {threading.current_thread().name}")
            return real(self, *args)

        monkeypatch.setattr(ObjectStorage, name, spied)
    model = torch.nn.Linear(8, 8)
    url = f"s3://{bucket}/run"
    with envkit.CheckpointManager(url, project="p", async_save=True, keep_last=2, keep_best=0) as mgr:
        for s in (1, 2, 3):
            mgr.save(epoch=0, step=s, model=model)
        gate = gate_for("run/p_0000_00000004.pth", part=None)  # step 4: held before its completion
        mgr.save(epoch=0, step=4, model=model)  # collects step 3 (retention deletes step 1), stages step 4
        assert gate.reached.wait(GATE_TIMEOUT_S)
        assert _keys(s3_server, bucket, "run/p_") == ["run/p_0000_00000002.pth", "run/p_0000_00000003.pth"]
        assert _uploads(s3_server, bucket) == ["run/p_0000_00000004.pth"]  # every part is up; S3 shows none of it
        assert mgr.latest().step == 3  # type: ignore[union-attr]
        gate.open()
        assert mgr.wait() is not None
    assert _keys(s3_server, bucket, "run/") == ["run/.envkit-index.json", "run/p_0000_00000003.pth", "run/p_0000_00000004.pth"]
    assert seen and all(s.endswith("on MainThread") for s in seen), seen
    assert sum(s.startswith("delete") for s in seen) == 2
    rows = ObjectListing.for_url(url).read_index_bytes()
    assert rows is not None and b"p_0000_00000004.pth" in rows and b"p_0000_00000001.pth" not in rows


# -- failures: raised at the next save/wait/close, one line, nothing left under the key -------


def _readonly_storage(mgr: envkit.CheckpointManager, monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    """From now on the manager's storage writes with the key the test server denies writes to (403 AccessDenied)."""
    denied = s3fs.S3FileSystem(key=READONLY_KEY, secret="testing", endpoint_url=server.url, skip_instance_cache=True)
    monkeypatch.setattr(mgr.storage, "fs", denied)


def _one_line(error: BaseException) -> str:
    assert isinstance(error, EnvkitError), repr(error)
    text = str(error)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("where", ["save", "wait", "close"])
def test_a_denied_background_write_is_raised_at_the_next_save_wait_or_close(
        bucket: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    model = torch.nn.Linear(64, 64)
    url = f"s3://{bucket}/run"
    mgr = envkit.CheckpointManager(url, project="p", async_save=True, keep_last=None)
    first = mgr.save(epoch=0, step=1, model=model)
    assert mgr.wait() == first
    real_fs = mgr.storage.fs  # type: ignore[attr-defined]
    _readonly_storage(mgr, monkeypatch, s3_server)
    assert mgr.save(epoch=0, step=2, model=model) is not None  # returns: the upload fails on the background thread
    with pytest.raises(CheckpointWriteError) as raised:
        if where == "save":
            mgr.save(epoch=0, step=3, model=model)
        elif where == "wait":
            mgr.wait()
        else:
            mgr.close()
    text = _one_line(raised.value)
    assert "access denied to write" in text and "p_0000_00000002.pth" in text and "AWS_ACCESS_KEY_ID" in text
    assert _keys(s3_server, bucket, "run/p_") == ["run/p_0000_00000001.pth"] and _uploads(s3_server, bucket) == []
    assert mgr.wait() is None  # raised once, not again
    monkeypatch.setattr(mgr.storage, "fs", real_fs)
    if where != "close":  # the manager goes on: step 3 was not saved (the error was), step 4 is
        assert mgr.save(epoch=0, step=4, model=model) is not None and mgr.wait().name == "p_0000_00000004.pth"  # type: ignore[union-attr]
    mgr.close()
    with envkit.CheckpointManager(url, project="p") as again:
        assert again.latest().step == (1 if where == "close" else 4)  # type: ignore[union-attr]


@pytest.mark.slow
def test_killing_the_server_mid_background_upload_is_raised_at_wait_and_keeps_the_previous_checkpoint(
        bucket: str, s3_server: S3Server, gate_for: Callable[..., UploadGate], monkeypatch: pytest.MonkeyPatch) -> None:
    """The manager talks to the server through a proxy process; kill -9 of it is the server dying mid-upload."""
    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    proxy = Proxy(s3_server.port)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    model = torch.nn.Linear(1500, 1500)  # 9 MB: two parts
    url = f"s3://{bucket}/run"
    try:
        mgr = envkit.CheckpointManager(url, project="p", async_save=True)
        mgr.save(epoch=0, step=1, model=model)
        mgr.wait()
        gate = gate_for("run/p_0000_00000002.pth", part=2)  # the first part is up, the second waits
        mgr.save(epoch=0, step=2, model=model)
        assert gate.reached.wait(GATE_TIMEOUT_S)
        proxy.kill()  # the server dies while the background thread is mid-upload
        gate.open()
        with pytest.raises(CheckpointWriteError) as raised:
            mgr.wait()
        assert "did not answer" in _one_line(raised.value)
        assert _keys(s3_server, bucket, "run/p_") == ["run/p_0000_00000001.pth"]  # asked of the server itself
        assert _uploads(s3_server, bucket) == ["run/p_0000_00000002.pth"]  # the dead server could not be told to abort it
        proxy.start()  # the server is back, with what it had stored
        latest = mgr.latest()
        assert latest is not None and latest.step == 1 and envkit.verify(latest.path).ok
        mgr.close()
        with envkit.CheckpointManager(url, project="p", async_save=True) as again:  # a new writer aborts the dead upload
            assert _uploads(s3_server, bucket) == []
            assert again.resume(model=model).step == 1  # type: ignore[union-attr]
            again.save(epoch=0, step=2, model=model)
        with envkit.CheckpointManager(url, project="p") as after:
            assert [i.step for i in after.list()] == [1, 2]
    finally:
        proxy.kill()


# -- a stop's save ---------------------------------------------------------------------------


def test_sigterm_final_save_waits_for_the_upload_in_flight_then_saves_synchronously(
        bucket: str, s3_server: S3Server, gate_for: Callable[..., UploadGate]) -> None:
    model, opt = trained()
    url = f"s3://{bucket}/run"
    gate = gate_for("run/p_0000_00000001.pth", part=None)
    mgr = envkit.CheckpointManager(url, project="p", async_save=True, keep_last=None)
    try:
        mgr.handle_signals()
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        assert gate.reached.wait(GATE_TIMEOUT_S)  # step 1's upload is held before its completion
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal; the handler only sets the flag
        assert mgr.should_stop
        step(model, opt)
        expected = snapshot(model, opt)
        s3_server.reset_log()
        opener = threading.Timer(0.2, gate.open)  # opens the gate while the stop's save() waits for it
        opener.start()
        last = mgr.save(epoch=0, step=2, model=model, optimizer=opt)
        opener.join()
        order = [(r.method, r.query.split("&")[0][:8], r.path.rsplit("/", 1)[-1]) for r in s3_server.log()
                 if r.path.endswith(".pth") and r.method == "POST"]
        assert order == [("POST", "uploadId", "p_0000_00000001.pth"),  # step 1 completed first ...
                         ("POST", "uploads", "p_0000_00000002.pth"), ("POST", "uploadId", "p_0000_00000002.pth")], order
        assert gate.log == ["complete on envkit-save p_0000_00000001.pth", "completed on envkit-save p_0000_00000001.pth"]
        _assert_holds(last, bucket, expected)  # ... then step 2, on this thread, durable when save() returned
        assert mgr.latest().step == 2 and mgr.exit_code == 128 + signal.SIGTERM  # type: ignore[union-attr]
        assert mgr.wait() is None  # nothing left in flight
    finally:
        mgr.close()


# -- kill -9 mid-background upload; resume bit-identical ---------------------------------------

TRAIN = textwrap.dedent(
    """
    import os, random, sys
    import numpy as np
    import torch
    import envkit

    STEPS, EVERY = 12, 3

    def train(where, *, async_save, hold_at=None):
        '''Train STEPS steps (resuming from where), saving every EVERY; hold_at: the upload of that step's save stops
        after its first part, and the process says so ("held"), to be killed there.'''
        torch.set_num_threads(1)
        torch.manual_seed(0); random.seed(0); np.random.seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1200, 1200), torch.nn.Dropout(0.1), torch.nn.Linear(1200, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if hold_at is not None:
            import threading, s3fs
            real = s3fs.core.S3File._upload_chunk
            def held(self, final=False):
                if self.path.endswith(f"_{hold_at:08d}.pth") and getattr(self, "parts", None):
                    if threading.current_thread() is threading.main_thread():
                        sys.exit("the upload ran on the caller's thread: save() did not return before it")
                    print("held", flush=True)
                    threading.Event().wait()  # the background thread is mid-upload, for good
                return real(self, final)
            s3fs.core.S3File._upload_chunk = held
        mgr = envkit.CheckpointManager(where, project="r", keep_last=2, keep_best=0, async_save=async_save)
        info = mgr.resume(model=model, optimizer=opt)
        for s in range((info.step if info else 0) + 1, STEPS + 1):
            x = torch.randn(8, 1200) + float(np.random.rand()) + random.random()
            loss = model(x).pow(2).mean()
            loss.backward(); opt.step(); opt.zero_grad()
            if s % EVERY == 0:
                mgr.save(epoch=0, step=s, model=model, optimizer=opt)
                print(f"saved {s}", flush=True)
        mgr.close()
        return {"model": model.state_dict(), "optimizer": opt.state_dict()}

    if __name__ == "__main__":
        train(sys.argv[1], async_save=True, hold_at=int(sys.argv[2]))
    """
)


@pytest.mark.slow
def test_kill_9_mid_background_upload_keeps_latest_and_the_resume_is_bit_identical(
        tmp_path: Path, bucket: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process training with async saves to the bucket is killed while the background thread is mid-upload of
    step 9 (its first part up, save() long returned): step 6 stays latest(), nothing appears under step 9's key;
    resumed (async again), the run ends with weights and optimizer state equal, bit for bit, to a run never
    interrupted (a synchronous one, to a local folder)."""
    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    script = tmp_path / "train_async.py"
    script.write_text(TRAIN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = f"import runpy, envkit.checkpoint.remote as r; r.PART_BYTES = 5 << 20; runpy.run_path({str(script)!r}, run_name='__main__')"
    url = f"s3://{bucket}/run"
    child = subprocess.Popen([sys.executable, "-c", code, url, "9"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    assert child.stdout is not None
    seen: list[str] = []
    for line in child.stdout:
        seen.append(line.strip())
        if "held" in seen and "saved 9" in seen:
            break
    child.send_signal(signal.SIGKILL)  # save(step 9) returned; its upload is halfway
    assert child.wait(60) == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert seen[:3] == ["saved 3", "saved 6", seen[2]] and "saved 9" in seen, seen
    assert _keys(s3_server, bucket, "run/r_") == ["run/r_0000_00000003.pth", "run/r_0000_00000006.pth"]
    assert _uploads(s3_server, bucket) == ["run/r_0000_00000009.pth"]  # begun, never completed: S3 shows none of it
    listing = ObjectListing.for_url(url)
    parts = listing.fs.call_s3("list_multipart_uploads", Bucket=bucket)["Uploads"]
    assert listing.fs.call_s3("list_parts", Bucket=bucket, Key=parts[0]["Key"], UploadId=parts[0]["UploadId"])["Parts"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", envkit.EphemeralDirectoryWarning)
        with envkit.CheckpointManager(url, project="r") as mgr:  # a new writer: latest() is step 6, the upload aborted
            latest = mgr.latest()
            assert latest is not None and latest.step == 6 and latest.valid and envkit.verify(latest.path).ok
            assert _uploads(s3_server, bucket) == []
    namespace: dict[str, Any] = {}
    exec(compile(TRAIN, str(script), "exec"), namespace)
    threads = torch.get_num_threads()
    try:
        resumed = namespace["train"](url, async_save=True)
        reference = namespace["train"](tmp_path / "reference", async_save=False)
    finally:
        torch.set_num_threads(threads)
    for key, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    for index, state in reference["optimizer"]["state"].items():
        for key, value in state.items():
            other = resumed["optimizer"]["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, key)
    with envkit.CheckpointManager(url, project="r") as after:
        assert [i.step for i in after.list()] == [9, 12]


def _save_forever(url: str, model: torch.nn.Module, ready: Any = None) -> None:
    """Child: async saves as fast as it can until killed (no tensor math after fork; staging copies on one thread)."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    real_commit = s3fs.core.S3File.commit

    def commit(file: Any) -> Any:
        if file.path.endswith(".pth") and threading.current_thread() is threading.main_thread():
            os._exit(3)  # a save uploaded on the caller's thread: not a background save; nothing gets committed
        return real_commit(file)

    s3fs.core.S3File.commit = commit
    mgr = envkit.CheckpointManager(url, project="stress", keep_last=2, keep_best=0, async_save=True)
    latest = mgr.latest()
    s = latest.step if latest else 0
    if ready is not None:
        ready.set()  # the kill's random moment is drawn from here: the child's start-up is no part of it
    while True:
        s += 1
        mgr.save(epoch=0, step=s, model=model)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_at_random_moments_of_background_saves_to_the_bucket(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "PART_BYTES", 5 * 1024 * 1024)
    last = kill_loop(f"s3://{bucket}/stress", 20, seed=2, max_delay=0.6, saver=_save_forever)
    assert last > 0  # background saves completed, and none was lost


def test_a_distributed_run_on_a_bucket_saves_synchronously_and_says_so_once(bucket: str) -> None:
    """Rank 0's background upload would need the other ranks to learn its outcome off the caller's thread: not yet.
    stage() answers None (the manager then saves synchronously) and warns once per process, naming the prefix."""
    from envkit.checkpoint import background
    from envkit.checkpoint.ranks import Ranks
    from envkit.errors import BackgroundSaveWarning

    background._WARNED.discard("bucket-distributed")
    storage = ObjectStorage(envkit.checkpoint.urls.ObjectPath(f"s3://{bucket}/ddp"), sharded=False, digest="xxh3_128",
                            ranks=Ranks(True, 0, None))
    args: dict[str, Any] = dict(epoch=0, step=1, metrics={}, extra=None, parts={}, fingerprint=None, meta={},
                                stager=background.Stager())
    with pytest.warns(BackgroundSaveWarning, match=f"s3://{bucket}/ddp: a distributed run saves to a bucket synchronously"):
        assert storage.stage("a.pth", **args) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.stage("b.pth", **args) is None  # once
    assert not ObjectListing.for_url(f"s3://{bucket}/ddp").committed_sizes()


# -- sharded (.dcp) saves to a bucket in the background ---------------------------------------


def test_a_sharded_save_to_a_bucket_runs_in_the_background_and_resumes_bit_identically(
        bucket: str, s3_server: S3Server, gate_for: Callable[..., UploadGate], one_rank: None) -> None:
    """A world of one (gloo): the background twin's collectives run on a group of its own. While a shard's upload is
    held, save() has returned, the model changes, and the previous checkpoint is still the latest; what lands and
    resumes is the state of save time."""
    import copy

    from tests.checkpoint.test_remote_sharded import _make, _same, _train

    url = f"s3://{bucket}/shards"
    model, opt = _make(0)
    with envkit.CheckpointManager(url, project="p", sharded=True, async_save=True, keep_last=2) as mgr:
        _train(model, opt, 1)
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        assert str(mgr.wait()) == f"{url}/p_0000_00000001.dcp"
        _train(model, opt, 1)
        expected = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        gate = gate_for("p_0000_00000002.dcp/__0_0.distcp")
        assert str(mgr.save(epoch=0, step=2, model=model, optimizer=opt)) == f"{url}/p_0000_00000002.dcp"
        assert gate.reached.wait(GATE_TIMEOUT_S), gate.log  # the upload is under way, on the background thread
        _train(model, opt, 3)  # the loop goes on and changes the weights
        assert sorted(ObjectListing.for_url(url).committed_sizes()) == ["p_0000_00000001.dcp"]
        assert not any("envkit.json" in r.path and "00000002" in r.path for r in s3_server.log() if r.method == "PUT")
        gate.open()
        assert str(mgr.wait()) == f"{url}/p_0000_00000002.dcp"
        assert gate.log[0].startswith("part 1 on envkit-save")
    assert sorted(ObjectListing.for_url(url).committed_sizes()) == ["p_0000_00000001.dcp", "p_0000_00000002.dcp"]
    fresh, fresh_opt = _make(7)
    with envkit.CheckpointManager(url, project="p", sharded=True) as again:
        info = again.resume(model=fresh, optimizer=fresh_opt)
        assert info is not None and info.step == 2
    assert _same(fresh.state_dict(), expected[0]) and _same(fresh_opt.state_dict(), expected[1])


def test_a_failed_background_sharded_upload_is_raised_at_wait_and_keeps_the_previous_checkpoint(
        bucket: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, one_rank: None) -> None:
    from tests.checkpoint.test_remote import drop_the_connection_at_part
    from tests.checkpoint.test_remote_sharded import _make

    url = f"s3://{bucket}/shards-fail"
    model, opt = _make(0)
    with envkit.CheckpointManager(url, project="p", sharded=True, async_save=True) as mgr:
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        mgr.wait()
        with monkeypatch.context() as patched:
            drop_the_connection_at_part(patched, 2)
            mgr.save(epoch=0, step=2, model=model, optimizer=opt)  # returns: the failure is the background thread's
            with pytest.raises(CheckpointWriteError, match="earlier checkpoints are untouched") as raised:
                mgr.wait()
        assert "\n" not in str(raised.value)
        latest = mgr.latest()
        assert latest is not None and latest.step == 1
        assert sorted(ObjectListing.for_url(url).committed_sizes()) == ["p_0000_00000001.dcp"]
        assert _uploads(s3_server, bucket) == []
