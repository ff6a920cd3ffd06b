"""Background saves (CheckpointManager(async_save=True)): real threads, real signals, real subprocesses.

The background thread is held at a gate (a threading.Event inside the real writer) where a test
must know what happens while a save is in flight; nothing here asserts on time.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import envkit  # noqa: E402
from envkit.checkpoint import hashing, writer  # noqa: E402
from envkit.errors import BackgroundSaveWarning, CheckpointWriteError  # noqa: E402
from tests.checkpoint.test_reliability import _assert_same_final_state, _train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GATE_TIMEOUT_S = 60  # a gate never opened fails the test instead of hanging it

pytestmark = pytest.mark.filterwarnings("ignore::envkit.errors.EphemeralDirectoryWarning")  # tmp_path is under /tmp


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters())
    step(model, opt)
    return model, opt


def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(8, 16)).sum().backward()
    opt.step()
    opt.zero_grad()


def snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, object]:
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in opt.state_dict()["state"].items()},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }


def assert_holds(path: Path, expected: dict[str, object]) -> None:
    assert envkit.verify(path).ok
    state = torch.load(path, weights_only=True)
    for key, tensor in expected["model"].items():  # type: ignore[attr-defined]
        assert torch.equal(state["model"][key], tensor), key
    for index, saved in expected["optimizer"].items():  # type: ignore[attr-defined]
        for key, value in saved.items():
            got = state["optimizer"]["state"][index][key]
            assert torch.equal(got, value) if torch.is_tensor(value) else got == value, (index, key)
    assert torch.equal(state["rng"]["torch"], expected["torch_rng"])
    version, internal, gauss = expected["python_rng"]  # type: ignore[misc]
    assert state["rng"]["python"] == [version, list(internal), gauss]


class Gate:
    """Holds the background thread inside the real writer until opened; logs what happens, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.opened = threading.Event()
        self.reached = threading.Event()

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate()
    real = writer.write_uncommitted

    def gated(obj: object, path: Path, **kwargs: object) -> Path:
        g.log.append(f"write {path.name} on {threading.current_thread().name}")
        g.reached.set()
        if not g.opened.wait(GATE_TIMEOUT_S):
            raise AssertionError("the gate was never opened")
        out = real(obj, path, **kwargs)  # type: ignore[arg-type]
        g.log.append(f"written {path.name}")
        return out

    monkeypatch.setattr(writer, "write_uncommitted", gated)
    yield g
    g.open()


def test_save_returns_once_staged_and_the_checkpoint_holds_the_state_of_save_time(tmp_path: Path, gate: Gate) -> None:
    model, opt = trained()
    with envkit.CheckpointManager(tmp_path, project="p", async_save=True, keep_last=None) as mgr:
        first = mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        expected_first = snapshot(model, opt)
        assert gate.reached.wait(GATE_TIMEOUT_S)  # the background thread is writing, held at the gate ...
        assert not first.exists() and mgr.latest() is None  # ... and save() has returned: nothing committed yet
        step(model, opt)  # the loop changes everything right away: weights, Adam's moments and step, the RNG
        with torch.no_grad():
            model[0].weight.fill_(1e6)
        random.random()
        gate.open()
        assert mgr.wait() == first
        assert_holds(first, expected_first)
        # a second save reuses the staging buffers: it holds its own state, not the first one's
        second = mgr.save(epoch=0, step=2, model=model, optimizer=opt)
        expected_second = snapshot(model, opt)
        step(model, opt)
        assert mgr.wait() == second
        assert_holds(second, expected_second)
        assert_holds(first, expected_first)
        assert [i.step for i in mgr.list()] == [1, 2] and mgr.latest().step == 2
    assert "envkit-save" in gate.log[0]  # written on the background thread, not the caller's


def test_at_most_one_save_in_flight_the_next_save_waits_for_it(tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.checkpoint.background import Stager

    real_stage = Stager.stage

    def logged_stage(self: Stager, state: object) -> object:
        gate.log.append(f"stage {state.step}")  # type: ignore[attr-defined]
        return real_stage(self, state)  # type: ignore[arg-type]

    monkeypatch.setattr(Stager, "stage", logged_stage)
    model, opt = trained()
    with envkit.CheckpointManager(tmp_path, project="p", async_save=True, keep_last=2, keep_best=0) as mgr:
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        assert gate.reached.wait(GATE_TIMEOUT_S)
        opener = threading.Timer(0.2, gate.open)  # opens the gate while the next save() is waiting
        opener.start()
        mgr.save(epoch=0, step=2, model=model, optimizer=opt)  # blocks until step 1 is committed
        assert gate.log[:3] == ["stage 1", gate.log[1], "written p_0000_00000001.pth"]
        assert gate.log[3] == "stage 2"
        for s in (3, 4):
            mgr.save(epoch=0, step=s, model=model, optimizer=opt)
    opener.join()
    # retention ran after each commit (on the caller's thread): keep_last=2
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["p_0000_00000003.pth", "p_0000_00000004.pth"]
    writes = [line for line in gate.log if line.startswith(("write ", "written"))]
    assert [w.split()[0] for w in writes] == ["write", "written"] * 4  # never two writes at once


def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int = errno.ENOSPC) -> None:
    """The disk fails partway through a write (injected into the real writer, as test_reliability does)."""
    real_write = hashing.HashingWriter._write

    def failing_write(self: hashing.HashingWriter, data: object) -> int:
        if self.position > 20_000:
            raise OSError(code, os.strerror(code))
        return real_write(self, data)

    monkeypatch.setattr(hashing.HashingWriter, "_write", failing_write)


@pytest.mark.parametrize("where", ["save", "wait", "close", "exit"])
def test_a_background_failure_is_raised_at_the_next_save_wait_close_or_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              where: str) -> None:
    model = torch.nn.Linear(128, 128)
    mgr = envkit.CheckpointManager(tmp_path, project="p", async_save=True, keep_last=None)
    first = mgr.save(epoch=0, step=1, model=model)
    assert mgr.wait() == first
    before = first.read_bytes()
    _failing_writes(monkeypatch)
    mgr.save(epoch=0, step=2, model=model)  # returns: the failure happens on the background thread
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        if where == "save":
            mgr.save(epoch=0, step=3, model=model)
        elif where == "wait":
            mgr.wait()
        elif where == "close":
            mgr.close()
        else:
            with mgr:
                pass
    monkeypatch.undo()
    assert first.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".envkit")) == [first.name]  # no temporary file
    assert mgr.wait() is None  # raised once, not again
    if where in ("save", "wait"):  # the manager goes on: the next save works
        assert mgr.save(epoch=0, step=4, model=model) is not None and mgr.wait().name == "p_0000_00000004.pth"
    mgr.close()
    with envkit.CheckpointManager(tmp_path, project="p") as again:
        assert again.latest().step == (4 if where in ("save", "wait") else 1)


def test_with_block_that_raises_keeps_its_exception_and_warns_of_the_failed_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(128, 128)
    with pytest.warns(BackgroundSaveWarning, match="a background save failed.*No space left on device"):
        with pytest.raises(KeyError, match="the loop's own error"):
            with envkit.CheckpointManager(tmp_path, project="p", async_save=True) as mgr:
                _failing_writes(monkeypatch)
                mgr.save(epoch=0, step=1, model=model)
                raise KeyError("the loop's own error")
    assert not list(tmp_path.glob("*.pth"))
    envkit.CheckpointManager(tmp_path, project="p").close()  # the folder's lock was released


def test_tied_weights_stay_shared_and_a_cpu_copy_is_what_gets_written(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight  # tied, as language models tie input and output embeddings
    scale = torch.nn.Parameter(torch.full((2,), 3.0))
    with envkit.CheckpointManager(tmp_path, project="p", async_save=True) as mgr:
        path = mgr.save(epoch=0, step=1, model=model, extra={"scale": scale, "note": ["a", 1]})
        with torch.no_grad():
            scale.zero_()
    saved = torch.load(path, weights_only=True)
    assert isinstance(saved["extra"]["scale"], torch.nn.Parameter) and saved["extra"]["scale"].tolist() == [3.0, 3.0]
    assert saved["extra"]["note"] == ["a", 1]
    state = saved["model"]
    assert state["0.weight"].data_ptr() == state["1.weight"].data_ptr()  # one tensor in the file, as torch.save writes it
    fresh = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10, bias=False))
    fresh.load_state_dict(state)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_sigterm_final_save_waits_for_the_one_in_flight_then_saves_synchronously(tmp_path: Path, gate: Gate) -> None:
    model, opt = trained()
    mgr = envkit.CheckpointManager(tmp_path, project="p", async_save=True, keep_last=None)
    try:
        mgr.handle_signals()
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        assert gate.reached.wait(GATE_TIMEOUT_S)
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal; the handler only sets the flag
        assert mgr.should_stop
        step(model, opt)
        expected = snapshot(model, opt)
        opener = threading.Timer(0.2, gate.open)
        opener.start()
        last = mgr.save(epoch=0, step=2, model=model, optimizer=opt)
        opener.join()
        # step 1 was written and committed first; step 2 on this thread, durable on return
        assert gate.log[1:] == ["written p_0000_00000001.pth", f"write {last.name} on MainThread", f"written {last.name}"]
        assert_holds(last, expected)
        assert mgr.latest().step == 2 and mgr.exit_code == 128 + signal.SIGTERM
        assert mgr.wait() is None  # nothing left in flight
    finally:
        mgr.close()


def test_a_stop_save_is_made_even_when_the_background_save_before_it_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(128, 128)
    with envkit.CheckpointManager(tmp_path, project="p", async_save=True, keep_last=None) as mgr:
        mgr.handle_signals()
        mgr.save(epoch=0, step=1, model=model)
        mgr.wait()
        real_write = hashing.HashingWriter._write

        def step_2_fails(self: hashing.HashingWriter, data: object) -> int:
            if "00000002" in self._fh.name and self.position > 20_000:  # the disk is full for step 2 only
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(self, data)

        monkeypatch.setattr(hashing.HashingWriter, "_write", step_2_fails)
        mgr.save(epoch=0, step=2, model=model)  # fails on the background thread
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.warns(BackgroundSaveWarning, match="the background save before this stop failed.*No space left"):
            last = mgr.save(epoch=0, step=3, model=model)
        assert mgr.should_stop and envkit.verify(last).ok and mgr.latest().step == 3
        mgr.restore_signals()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["p_0000_00000001.pth", "p_0000_00000003.pth"]


class _WithoutStage:
    """A storage that cannot save in the background (it has no ``stage``), as another CheckpointStorage may be."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        if name == "stage":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_a_storage_without_stage_saves_synchronously_with_one_warning(tmp_path: Path) -> None:
    model = torch.nn.Linear(8, 8)
    with envkit.CheckpointManager(tmp_path, project="p", async_save=True, keep_last=None) as mgr:
        mgr.storage = _WithoutStage(mgr.storage)  # type: ignore[assignment]
        with pytest.warns(BackgroundSaveWarning, match="_WithoutStage cannot save in the background; async_save=True saves synchronously"):
            first = mgr.save(epoch=0, step=1, model=model)
        assert envkit.verify(first).ok and mgr.wait() is None  # durable on return: nothing in flight
        with warnings.catch_warnings():
            warnings.simplefilter("error", BackgroundSaveWarning)  # once, not at every save
            assert envkit.verify(mgr.save(epoch=0, step=2, model=model)).ok


CHILD = textwrap.dedent(
    """
    import os, sys, time, torch, envkit
    from envkit.checkpoint import hashing
    folder, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Linear(512, 512)  # 1 MiB of weights
    if mode == "kill":
        mgr = envkit.CheckpointManager(folder, project="k", async_save=True, keep_last=1, keep_best=0)
        mgr.save(epoch=0, step=1, model=model)
        mgr.wait()
        real = hashing.HashingWriter._write
        def slow(self, data):  # a slow disk: the background write stalls halfway
            if self.position > 300_000:
                print("writing", flush=True)
                time.sleep(120)
            return real(self, data)
        hashing.HashingWriter._write = slow
        with torch.no_grad():
            model.weight.add_(1.0)
        mgr.save(epoch=0, step=2, model=model)
        print("returned", flush=True)
        time.sleep(120)
    else:  # exit: the script ends without wait() or close()
        real, slept = hashing.HashingWriter._write, []
        def faulty(self, data):
            name = os.path.basename(os.path.dirname(self._fh.name))
            if name == "good" and not slept:  # slow: still writing when the script ends
                slept.append(time.sleep(1))
            if name == "bad" and self.position > 20_000:
                raise OSError(28, "No space left on device")
            return real(self, data)
        hashing.HashingWriter._write = faulty
        good = envkit.CheckpointManager(os.path.join(folder, "good"), project="g", async_save=True)
        good.save(epoch=0, step=1, model=model)  # the interpreter finishes it before exiting
        bad = envkit.CheckpointManager(os.path.join(folder, "bad"), project="b", async_save=True)
        bad.save(epoch=0, step=1, model=model)
        print("end of script", flush=True)
    """
)


def _child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_kill_9_mid_background_write_leaves_the_previous_checkpoint_latest(tmp_path: Path) -> None:
    child = _child(str(tmp_path), "kill")
    assert child.stdout is not None
    seen = []
    for line in child.stdout:
        seen.append(line.strip())
        if seen[-2:] == ["returned", "writing"] or seen[-2:] == ["writing", "returned"]:
            break
    child.send_signal(signal.SIGKILL)  # save() has returned and the background thread is halfway through the write
    assert child.wait(60) == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers, "no temporary file: the kill came too late to prove anything"
    assert not (tmp_path / "k_0000_00000002.pth").exists()
    with envkit.CheckpointManager(tmp_path, project="k") as mgr:
        latest = mgr.latest()
        assert latest is not None and latest.path.name == "k_0000_00000001.pth" and latest.valid
        assert [p.name for p in mgr.removed_temp_files] == leftovers
        torch.manual_seed(0)
        assert torch.equal(torch.load(latest.path, weights_only=True)["model"]["weight"], torch.nn.Linear(512, 512).weight)


@pytest.mark.slow
def test_a_script_that_never_waits_still_commits_and_a_failure_is_reported_at_exit(tmp_path: Path) -> None:
    child = _child(str(tmp_path), "exit")
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.strip() == "end of script"
    good = tmp_path / "good" / "g_0000_00000001.pth"
    assert envkit.verify(good).ok, err  # the thread is not a daemon: the interpreter finished the save before exiting
    assert "BackgroundSaveWarning" in err and "a background save failed and nobody waited for it" in err, err
    assert str(tmp_path / "bad" / "b_0000_00000001.pth") in err
    assert not list((tmp_path / "bad").glob("*.pth")) and not [p for p in (tmp_path / "bad").iterdir() if ".tmp-" in p.name]


def _run_until(folder: Path, stop_at: int, signum: int, *extra: str) -> str:
    run = _train(folder, None, "--async-save", "--step-delay", "0.01", *extra)
    assert run.stdout is not None
    seen = []
    for line in run.stdout:
        seen.append(line)
        if line.startswith(f"step {stop_at} "):
            run.send_signal(signum)
            break
    out = "".join(seen) + run.communicate(timeout=180)[0]
    assert run.returncode == (128 + signum if signum == signal.SIGTERM else -signum), out
    return out


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_after_background_saves_is_bit_identical(tmp_path: Path) -> None:
    """examples/train_resumable.py --async-save: stopped by SIGTERM (its last save synchronous, exit 143), resumed,
    killed by SIGKILL (whatever the background thread had committed stays), resumed again: the final weights
    equal those of a run that was never interrupted (a synchronous one)."""
    reference = _train(tmp_path / "reference", tmp_path / "reference.pt")
    assert reference.wait(180) == 0, reference.stderr.read() if reference.stderr else ""
    rng = random.Random(13)
    term_at, kill_at = rng.randrange(15, 30), rng.randrange(50, 70)
    rest = _run_until(tmp_path / "run", term_at, signal.SIGTERM)
    stopped = int(rest.strip().splitlines()[-1].split()[3])
    assert stopped >= term_at
    with envkit.CheckpointManager(tmp_path / "run", project="resumable") as mgr:
        assert mgr.latest().step == stopped  # the stop's save is durable when the process exits
    rest = _run_until(tmp_path / "run", kill_at, signal.SIGKILL)
    assert rest.splitlines()[0].endswith(f"step {stopped}")
    with envkit.CheckpointManager(tmp_path / "run", project="resumable") as mgr:
        latest = mgr.latest()
    assert latest is not None and latest.valid and stopped < latest.step <= kill_at + 7  # the kill lands a step or two after the line
    resumed = _train(tmp_path / "run", tmp_path / "resumed.pt", "--async-save")
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert out.splitlines()[0].endswith(f"step {latest.step}")
    _assert_same_final_state(tmp_path / "reference.pt", tmp_path / "resumed.pt")


@pytest.mark.slow
def test_background_saves_under_gloo_replicated_and_sharded_and_the_torch_20_fallback_mock(tmp_path: Path) -> None:
    """Two real gloo ranks: an all_reduce every step while the previous save is written; DCP's async_save for
    sharded saves; rank 0's background failure raised on both ranks at the next save; and, with DCP's
    async_save hidden (a mock of torch 2.0.1, which has none), sharded saves that are synchronous, with one warning."""
    import torch.distributed.checkpoint as dcp

    from tests.distributed.helpers import run_ranks, worker_commands

    has_async = hasattr(dcp, "async_save")  # torch 2.3 and later

    scenarios = ["async_sharded_mock_of_torch_20", "async_replicated", "async_sharded", "async_save_error"]  # the warning's once first
    results = run_ranks(worker_commands(2, tmp_path, scenarios))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        reports = r.reports()
        for name, suffix in (("async_replicated", ".pth"), ("async_sharded", ".dcp")):
            doc = reports[name]
            assert doc["step"] == 5 and doc["model"] is True and doc["rng"] is True, doc  # the state of save time, resumed
            assert doc["names"] == [f"a_0000_00000004{suffix}", f"a_0000_00000005{suffix}"]
            background = suffix == ".pth" or has_async  # torch 2.0.1 saves sharded synchronously: nothing left to wait for
            assert doc["last"] == (f"a_0000_00000005{suffix}" if background else None)
        old = reports["async_sharded_mock_of_torch_20"]
        assert old["durable"] is True and old["pending"] is None
        assert len(old["warnings"]) == 1 and "has no torch.distributed.checkpoint.async_save" in old["warnings"][0]
        err = reports["async_save_error"]
        assert err["ok"] is False and err["error"] == "CheckpointWriteError" and "No space left on device" in err["message"]
        if r.rank == 1:
            assert err["message"].startswith("rank 0 could not save")
        assert reports["async_save_error_after"]["last"].endswith("e_0000_00000004.pth")
    assert results[0].reports()["async_save_error_after"]["latest"] == 4
    assert not (tmp_path / "afull" / "e_0000_00000002.pth").exists()
