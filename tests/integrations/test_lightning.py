"""envkit.integrations.lightning with the real lightning.Trainer (2.6), on CPU, with a tiny model.

``tests/integrations/lightning_run.py`` is the training run (Linear 4->2, 4 batches an epoch,
SGD with momentum, not shuffled). Lightning is imported inside the tests, so that collecting this
file for ``make test-fast`` does not pay for ``import lightning``.

What Lightning 2.6 itself resumes exactly: a run resumed from an epoch-end checkpoint finishes
with the same weights as an uninterrupted one (test (a) holds it bit for bit). A mid-epoch resume
(``every_n_train_steps``) with a plain DataLoader does not: Lightning does not restore the
loader's position, and the resumed run ends elsewhere (0.07 off here), with or without envkit.
Shuffled loaders do not resume exactly either (Lightning saves no RNG state), hence ``shuffle=False``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import envkit
from envkit.errors import CorruptCheckpoint, EnvironmentDriftWarning, EnvironmentMismatch

torch = pytest.importorskip("torch")
# every test here imports lightning (seconds of CPU): all are slow, and `make test-fast` leaves them out
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="needs lightning")]

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RUN = HERE / "lightning_run.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run_module() -> Any:
    from tests.integrations import lightning_run  # imports lightning: only once a test runs

    return lightning_run


def _weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fit(root: Path, epochs: int, *, io: str = "plugin", ckpt_path: Path | None = None, **kwargs: Any) -> tuple[Any, Any]:
    R = _run_module()
    import lightning as L

    L.seed_everything(0, verbose=False)
    model = R.Tiny()
    trainer = R.trainer_for(root, epochs, io=io, **kwargs)
    trainer.fit(model, R.loader(), ckpt_path=ckpt_path)
    return trainer, model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs through EnvkitCheckpointIO: checkpoints/last.ckpt (epoch 1, step 8) and one file per epoch."""
    root = tmp_path_factory.mktemp("trained")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(root, 2)
    return root / "checkpoints"


class _TorchLoads:
    """Counts torch.load calls (the real one still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Any] = []
        real = torch.load

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(args[0] if args else kwargs.get("f"))
            return real(*args, **kwargs)

        monkeypatch.setattr(torch, "load", counting)


def _another_torch_minor() -> Any:
    live = envkit.collect()
    major, minor = (int(p) for p in live.torch.version.split(".")[:2])
    return replace(live, torch=replace(live.torch, version=f"{major}.{minor + 1}.0"))


def _restamped(source: Path, target: Path, fingerprint: Any) -> Path:
    """The checkpoint as another environment would have written it: the same dict, saved by
    envkit with that environment's fingerprint (member stamp and "envkit" key)."""
    from envkit.checkpoint.stamp import Stamp

    state = torch.load(source, weights_only=True)
    meta = dict(envkit.read_stamp(source).stamp.meta)
    state["envkit"] = Stamp(fingerprint, None, meta).to_json()
    envkit.save(state, target, meta={"epoch": meta["epoch"], "step": meta["step"]}, fingerprint=fingerprint)
    return target


# --- the stamp written by a real Trainer ----------------------------------------------------------


def test_every_checkpoint_is_stamped_with_the_epoch_step_and_monitored_metric(trained: Path) -> None:
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]  # no temporary file left
    for name, (epoch, step) in {"epoch=0-step=4.ckpt": (0, 4), "last.ckpt": (1, 8)}.items():
        info = envkit.read_stamp(trained / name)
        assert info.stamp_source == "member"
        assert (info.stamp.epoch, info.stamp.step) == (epoch, step)
        assert set(info.stamp.metrics) == {"train_loss"} and info.stamp.metrics["train_loss"] > 0
        assert info.stamp.meta["framework"].startswith("lightning 2.")
        assert info.stamp.fingerprint.digest == envkit.collect().digest
        assert envkit.verify(trained / name).status == "ok"
    state = torch.load(trained / "last.ckpt", weights_only=True)  # still an ordinary Lightning checkpoint
    assert {"state_dict", "optimizer_states", "loops", "callbacks", "envkit"} <= state.keys()
    assert state["envkit"]["fingerprint"] == envkit.read_stamp(trained / "last.ckpt").stamp.fingerprint.to_json()


# --- (a) killed, resumed, same weights ------------------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen[bytes], limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the training run ended early (exit {proc.returncode}): {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the training run never reached its hang point")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final weights of the 4-epoch run, never interrupted (in this process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, model = _fit(tmp_path_factory.mktemp("uninterrupted"), 4)
    return _weights(model)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_after_an_epoch_checkpoint_then_resumed_matches_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: dict[str, Any], sig: signal.Signals
) -> None:
    """Killed at the start of epoch 2 (after epoch 1's checkpoint; on SIGTERM Lightning's handler
    stops the run after the batch in progress, without saving it), resumed in a new process with
    ``trainer.fit(model, ckpt_path=last.ckpt)`` through EnvkitCallback: the final weights equal an
    uninterrupted 4-epoch run's, bit for bit (an epoch boundary: Lightning resumes exactly there)."""
    killed = tmp_path / "killed"
    killed.mkdir()
    proc = subprocess.Popen([sys.executable, str(RUN), str(killed), "--epochs", "4", "--hang-at-epoch", "2"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(killed / "ready", proc)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # SIGTERM: Lightning's handler sets a flag; one more batch runs, then SIGTERMException (a SystemExit: exit 0), unsaved
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    assert not (killed / "final.pt").exists()
    last = killed / "checkpoints" / "last.ckpt"
    stamp = envkit.read_stamp(last).stamp
    assert (stamp.epoch, stamp.step) == (1, 8) and envkit.verify(last).status == "ok"
    assert not [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]
    at_kill = torch.load(last, weights_only=True)["state_dict"]

    resumed = subprocess.run([sys.executable, str(RUN), str(killed), "--epochs", "4", "--io", "callback", "--resume", str(last)],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr + resumed.stdout

    after_resume = torch.load(killed / "final.pt", weights_only=True)
    assert _same(after_resume, uninterrupted)
    assert not _same(after_resume, dict(at_kill))  # it trained on after the resume
    final = envkit.read_stamp(last).stamp
    assert (final.epoch, final.step) == (3, 16) and envkit.verify(last).status == "ok"


# --- (b) another torch minor: refused before anything is unpickled --------------------------------


@pytest.mark.parametrize("io", ["plugin", "callback"])
def test_resume_under_another_torch_minor_is_refused_before_any_weight_changes(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, io: str
) -> None:
    other = _restamped(trained / "last.ckpt", tmp_path / "newer-torch.ckpt", _another_torch_minor())
    R = _run_module()
    import lightning as L

    L.seed_everything(0, verbose=False)
    model = R.Tiny()
    before = _weights(model)
    loads = _TorchLoads(monkeypatch)
    trainer = R.trainer_for(tmp_path / "run", 4, io=io)
    with pytest.raises(EnvironmentMismatch, match="torch.version") as raised:
        trainer.fit(model, R.loader(), ckpt_path=other)
    assert "install torch>=" in str(raised.value)
    assert loads.calls == []  # nothing was unpickled
    assert _same(_weights(model), before)
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def test_plain_lightning_resumes_the_same_file_the_control(trained: Path, tmp_path: Path) -> None:
    """The control for the test above: without envkit the Trainer resumes that file (and changes the weights)."""
    other = _restamped(trained / "last.ckpt", tmp_path / "newer-torch.ckpt", _another_torch_minor())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, model = _fit(tmp_path / "run", 3, io="none", ckpt_path=other)
    assert not _same(_weights(model), torch.load(trained / "last.ckpt", weights_only=True)["state_dict"])


def test_a_policy_that_allows_it_resumes_with_a_warning(trained: Path, tmp_path: Path) -> None:
    live = envkit.collect()
    older = replace(live, torch=replace(live.torch, version="2.0.1"))  # an older torch wrote it: a warning, not a refusal
    other = _restamped(trained / "last.ckpt", tmp_path / "older-torch.ckpt", older)
    with pytest.warns(EnvironmentDriftWarning, match="torch.version"):
        trainer, _ = _fit(tmp_path / "run", 3, io="callback", ckpt_path=other)
    assert trainer.global_step == 12


# --- (c) tampered bytes: CorruptCheckpoint before torch.load --------------------------------------


@pytest.mark.parametrize("where", ["a weight", "the pickle"])
def test_tampered_ckpt_is_refused_before_torch_load(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    source = trained / "last.ckpt"
    data = bytearray(source.read_bytes())
    if where == "a weight":
        weight = torch.load(source, weights_only=True)["state_dict"]["layer.weight"]
        at = bytes(data).index(weight.numpy().tobytes())
    else:
        at = bytes(data).index(b"optimizer_states")
    data[at] ^= 0x01
    tampered = tmp_path / "tampered.ckpt"
    tampered.write_bytes(bytes(data))
    R = _run_module()
    model = R.Tiny()
    before = _weights(model)
    loads = _TorchLoads(monkeypatch)
    trainer = R.trainer_for(tmp_path / "run", 4, io="callback")
    with pytest.raises(CorruptCheckpoint, match="digest mismatch"):
        trainer.fit(model, R.loader(), ckpt_path=tampered)
    assert loads.calls == [] and _same(_weights(model), before)


class _Touch:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.canary}",))


def test_a_ckpt_that_runs_code_is_refused_even_with_weights_only_false(trained: Path, tmp_path: Path) -> None:
    """``trainer.fit(..., weights_only=False)`` makes torch.load run any pickled call: the reader
    refuses the file first (UnsafeCheckpoint), and the control shows plain Lightning running it."""
    from envkit.errors import UnsafeCheckpoint

    state = torch.load(trained / "last.ckpt", weights_only=True)
    del state["envkit"]
    canary = tmp_path / "canary"
    state["hyper_parameters"] = {"payload": _Touch(canary)}
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    R = _run_module()
    with pytest.raises(UnsafeCheckpoint, match="os.system|posix.system"):
        R.trainer_for(tmp_path / "run", 3, io="callback").fit(R.Tiny(), R.loader(), ckpt_path=evil, weights_only=False)
    assert not canary.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        R.trainer_for(tmp_path / "plain", 3, io="none").fit(R.Tiny(), R.loader(), ckpt_path=evil, weights_only=False)
    assert canary.exists()  # the control: without envkit the pickle ran


# --- (d) checkpoints written by plain Lightning ---------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt written by Lightning alone (no envkit), by a module that saves its hyperparameters."""
    R = _run_module()
    import lightning as L

    class WithHparams(R.Tiny):  # type: ignore[name-defined]
        def __init__(self, width: int = 4, name: str = "tiny") -> None:
            super().__init__()
            self.save_hyperparameters()

    root = tmp_path_factory.mktemp("plain")
    L.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        R.trainer_for(root, 1, io="none").fit(WithHparams(), R.loader())
    return root / "checkpoints" / "last.ckpt"


PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("IMPORTED", sorted(m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules), file=sys.stderr))
sys.argv = ["envkit", *sys.argv[1:]]
runpy.run_module("envkit", run_name="__main__")
"""


def test_envkit_check_on_a_plain_lightning_ckpt_says_unstamped_and_runs_nothing(plain: Path) -> None:
    assert envkit.read_stamp(plain).stamp is None
    human = subprocess.run([sys.executable, "-c", PROBE, "check", str(plain)], env=ENV, capture_output=True, text=True, timeout=120)
    assert human.returncode == 0, human.stderr
    assert "no envkit stamp" in human.stdout and "unstamped" in human.stdout and "warn" in human.stdout
    assert "Traceback" not in human.stderr and "IMPORTED []" in human.stderr  # neither torch nor lightning was imported
    doc = subprocess.run([sys.executable, "-m", "envkit", "check", "--json", str(plain)], env=ENV, capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0, doc.stderr
    report = json.loads(doc.stdout)
    assert (report["verdict"], report["stamped"], report["format"]) == ("warn", False, "zip")
    assert [d["field"] for d in report["differences"]] == ["stamp"]


def test_plain_lightning_ckpt_resumes_through_envkit_with_the_unstamped_warning(plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _TorchLoads(monkeypatch)
    with pytest.warns(EnvironmentDriftWarning, match="no envkit stamp"):
        trainer, _ = _fit(tmp_path, 2, io="plugin", ckpt_path=plain)
    assert trainer.global_step == 8 and len(loads.calls) == 1  # guarded, then unpickled once, by Lightning
    assert envkit.read_stamp(tmp_path / "checkpoints" / "last.ckpt").stamp_source == "member"  # stamped from now on


# --- (e) the stamp survives re-saves --------------------------------------------------------------


def test_stamp_survives_a_plain_torch_resave(trained: Path, tmp_path: Path) -> None:
    resaved = tmp_path / "resaved.ckpt"
    torch.save(torch.load(trained / "last.ckpt", weights_only=True), resaved)
    info = envkit.read_stamp(resaved)
    assert info.stamp_source == "pickle" and info.stamp.fingerprint.digest == envkit.collect().digest
    assert (info.stamp.epoch, info.stamp.step) == (1, 8)
    assert envkit.check(resaved).verdict == "ok"
    assert envkit.verify(resaved).status == "unstamped"  # no digest inside the payload it digests
    other = _restamped(trained / "last.ckpt", tmp_path / "newer.ckpt", _another_torch_minor())
    torch.save(torch.load(other, weights_only=True), resaved)  # a re-save of the other environment's file
    assert envkit.check(resaved).verdict == "refuse"  # still known, still refused


def _user_io(legacy: bool) -> Any:
    from lightning.fabric.plugins import TorchCheckpointIO

    class UserIO(TorchCheckpointIO):
        """A user's own CheckpointIO: plain torch.save, its own way."""

        saves: list[str] = []

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            self.saves.append(os.fspath(path))
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)

    return UserIO()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-stream"])
def test_a_users_own_checkpoint_io_writes_and_envkit_stamps_what_it_wrote(tmp_path: Path, legacy: bool) -> None:
    from envkit.integrations.lightning import EnvkitCheckpointIO

    user: Any = _user_io(legacy)
    saves: list[str] = user.saves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer, _ = _fit(tmp_path, 2, io="callback", plugins=[user])
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, EnvkitCheckpointIO) and io.inner is user
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert os.fspath(last) in saves  # the user's IO did the writing
    info = envkit.read_stamp(last)
    assert info.stamp.fingerprint.digest == envkit.collect().digest and (info.stamp.epoch, info.stamp.step) == (1, 8)
    if legacy:  # a legacy stream has no room for a member: the "envkit" key carries the stamp
        assert (info.format, info.stamp_source) == ("legacy", "pickle")
    else:  # the zip it wrote was stamped in place (a copy, then a rename): digest and all
        assert (info.stamp_source, envkit.verify(last).status) == ("member", "ok")
    loaded = io.load_checkpoint(last)  # through the guard, then the user's IO
    assert loaded["global_step"] == 8


def test_async_checkpoint_io_gets_envkit_inside_it(tmp_path: Path) -> None:
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    from envkit.integrations.lightning import EnvkitCheckpointIO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer, _ = _fit(tmp_path, 2, io="callback", plugins=[AsyncCheckpointIO()])
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, AsyncCheckpointIO) and isinstance(io.checkpoint_io, EnvkitCheckpointIO)
    for name in ("epoch=0-step=4.ckpt", "last.ckpt"):
        assert envkit.verify(tmp_path / "checkpoints" / name).status == "ok"


# --- installing, and no lightning ----------------------------------------------------------------


def test_callback_and_plugin_together_install_one_io(tmp_path: Path) -> None:
    from envkit.integrations.lightning import EnvkitCallback, EnvkitCheckpointIO, install

    R = _run_module()
    plugin = EnvkitCheckpointIO(policy="strict")
    trainer = R.trainer_for(tmp_path, 1, io="none", callbacks=[EnvkitCallback()], plugins=[plugin])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(R.Tiny(), R.loader())
    assert trainer.strategy.checkpoint_io is plugin and plugin.inner is None
    assert install(trainer) is plugin


def test_checkpoint_meta_reads_epoch_step_and_the_monitored_score() -> None:
    from envkit.integrations.lightning import checkpoint_meta

    meta = checkpoint_meta({
        "epoch": 3, "global_step": 120,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss'}": {"monitor": "val_loss", "current_score": torch.tensor(0.25)},
            "ModelCheckpoint{'monitor': None}": {"monitor": None, "current_score": None},
            "EarlyStopping": {"wait_count": 1},
        },
    })
    assert (meta["epoch"], meta["step"], meta["metrics"]) == (3, 120, {"val_loss": 0.25})
    assert checkpoint_meta({"epoch": True})["framework"].startswith("lightning")
    assert "epoch" not in checkpoint_meta({"epoch": True})


HIDDEN = "import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None; "


def test_without_lightning_the_import_is_one_line_naming_the_extra() -> None:
    code = HIDDEN + (
        "import envkit, envkit.integrations\n"
        "try:\n    import envkit.integrations.lightning\n"
        "except envkit.EnvkitError as exc:\n    print(type(exc).__name__, exc.exit_code, exc, sep='|')\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    name, code_, message = done.stdout.splitlines()[0].split("|")
    assert (name, code_) == ("MissingExtra", "2")
    assert "pip install 'envkit[lightning]'" in message and "\n" not in message
    assert done.stdout.splitlines()[1] == "TORCH False"
    bare = subprocess.run([sys.executable, "-c", HIDDEN + "import envkit.integrations.lightning"], env=ENV, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 1
    assert bare.stderr.strip().splitlines()[-1].startswith("envkit.errors.MissingExtra: ")
    assert "During handling" not in bare.stderr  # no chained ImportError


def test_pytorch_lightning_is_used_when_lightning_is_absent(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_lightning")
    code = "import sys; sys.modules['lightning'] = None\n" + (
        "import envkit.integrations.lightning as L, pytorch_lightning as pl\n"
        "from pytorch_lightning.plugins import TorchCheckpointIO\n"
        "assert L._PACKAGE == 'pytorch_lightning' and issubclass(L.EnvkitCallback, pl.Callback), L._PACKAGE\n"
        "io = L.EnvkitCheckpointIO()\n"
        "assert isinstance(io, pl.plugins.CheckpointIO)\n"
        "import torch\n"
        "io.save_checkpoint({'epoch': 1, 'global_step': 5, 'state_dict': {'w': torch.ones(2)}}, sys.argv[1])\n"
        "print(io.load_checkpoint(sys.argv[1])['global_step'])\n"
    )
    target = tmp_path / "pl.ckpt"
    done = subprocess.run([sys.executable, "-c", code, str(target)], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "5"
    assert envkit.verify(target).status == "ok" and envkit.read_stamp(target).stamp.step == 5


def test_a_url_is_left_to_lightnings_io_with_the_dict_stamp_and_a_warning_on_load(tmp_path: Path) -> None:
    """fsspec's memory:// file system stands in for object storage: Lightning's own IO writes and reads it."""
    import fsspec  # type: ignore[import-untyped]

    from envkit.integrations.lightning import EnvkitCheckpointIO, _local

    assert _local("s3://bucket/last.ckpt") is None
    assert _local(f"file://{tmp_path}/x.ckpt") == tmp_path / "x.ckpt"
    io = EnvkitCheckpointIO()
    url = "memory://envkit-test/last.ckpt"
    io.save_checkpoint({"epoch": 1, "global_step": 3, "state_dict": {"w": torch.ones(2)}}, url)
    with fsspec.open(url, "rb") as fh:
        saved = torch.load(fh, weights_only=True)
    assert saved["envkit"]["meta"]["step"] == 3 and saved["envkit"]["payload"] is None
    with pytest.warns(UserWarning, match="without the guard"):
        assert io.load_checkpoint(url)["global_step"] == 3
    io.remove_checkpoint(url)
    assert not fsspec.filesystem("memory").exists("/envkit-test/last.ckpt")


def test_unknown_digest_is_bad_input() -> None:
    from envkit.errors import BadInput
    from envkit.integrations.lightning import EnvkitCheckpointIO

    with pytest.raises(BadInput, match="unknown digest"):
        EnvkitCheckpointIO(digest="md5")

