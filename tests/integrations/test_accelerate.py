"""Accelerate with envkit: every save_state folder stamped when save_state returns, a killed run resumed
from a stamped folder to the uninterrupted run's weights, load_state refused (by the load pre-hook)
against another torch and on a corrupt folder before anything is restored, `envkit check` on a folder
written without envkit, attach/detach.

Real processes (tests/integrations/acc_harness.py), real SIGKILL, the real `envkit` command line;
the in-process tests use a real Accelerator on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import envkit
from envkit.errors import BadInput, CheckpointSkippedWarning, CorruptCheckpoint, MissingExtra
from tests.integrations.runs import ROOT, Run, assert_check_reads_no_pickle, fake_newer_torch, tree

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

STOP_AT = 8  # the 4th save: checkpoint_3 (total_limit 3 keeps checkpoint_1..3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("acc")
    plain = Run("acc_harness.py", [str(tmp / "plain")], tmp)
    killed = Run("acc_harness.py", [str(tmp / "killed"), "--envkit", "--stop-at", str(STOP_AT)], tmp, stop_token=f"SAVED {STOP_AT}")
    killed.finish()
    plain.finish()
    assert plain.code == 0, plain.describe()
    pristine = tmp / "pristine"
    shutil.copytree(tmp / "killed", pristine)
    return {"tmp": tmp, "plain": plain, "killed": killed, "pristine": pristine}


def test_save_state_folders_are_stamped_when_save_state_returns(runs: dict) -> None:
    checkpoints = runs["pristine"] / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_1", "checkpoint_2", "checkpoint_3"]
    for i in (1, 2, 3):
        folder = checkpoints / f"checkpoint_{i}"
        assert envkit.verify(folder).status == "ok"
        meta = envkit.read_stamp(folder).stamp.meta
        assert meta["step"] == i and meta["iteration"] == i and meta["framework"] == "accelerate"
        files = json.loads((folder / "envkit.json").read_text())["files"]
        # the files save_accelerator_state writes last (RNG) are in: the stamp came after them
        assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= set(files)
        assert set(files) == {p.name for p in folder.iterdir()} - {"envkit.json"}


def test_killed_run_resumes_from_the_stamped_folder_to_the_same_weights(runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["pristine"], out)
    resumed = Run("acc_harness.py", [str(out), "--envkit", "--resume"], runs["tmp"]).finish()
    assert resumed.code == 0, resumed.describe()
    assert resumed.value("RESUME") == f"{out / 'checkpoints' / 'checkpoint_3'} {STOP_AT}"
    assert resumed.value("WEIGHTS") == runs["plain"].value("WEIGHTS")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_3", "checkpoint_4", "checkpoint_5"]
    assert all(envkit.verify(p).status == "ok" for p in (out / "checkpoints").iterdir())


def test_load_state_against_another_torch_minor_is_refused_by_the_load_hook_before_anything_is_restored(runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["pristine"], out)
    folder = out / "checkpoints" / "checkpoint_3"
    fake = fake_newer_torch(folder)
    before = tree(out)
    refused = Run("acc_harness.py", [str(out), "--envkit", "--load-state", str(folder)], runs["tmp"]).finish()
    assert refused.code == 3, refused.describe()
    digest, error = refused.value("REFUSED").split(" ", 1)
    assert error.startswith("EnvironmentMismatch:") and "torch.version" in error and fake in error
    assert digest == refused.value("INIT")
    assert tree(out) == before


def test_guard_resume_skips_a_folder_killed_during_save_state(runs: dict, tmp_path: Path) -> None:
    from envkit.integrations.accelerate import guard_resume

    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(runs["pristine"] / "checkpoints", checkpoints)
    half = checkpoints / "checkpoint_4"  # a kill inside save_state: weights written, the rest not, no stamp
    half.mkdir()
    shutil.copy(checkpoints / "checkpoint_3" / "model.safetensors", half / "model.safetensors")
    with pytest.warns(CheckpointSkippedWarning, match="checkpoint_4"):
        assert guard_resume(checkpoints) == str(checkpoints / "checkpoint_3")


def test_envkit_check_on_an_unstamped_save_state_folder(runs: dict, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint_5"
    shutil.copytree(runs["tmp"] / "plain" / "checkpoints" / "checkpoint_5", folder)
    assert_check_reads_no_pickle(folder, "custom_checkpoint_0.pkl", tmp_path)  # Accelerate loads these with weights_only=False


def test_two_ranks_killed_after_a_save_resume_to_the_same_weights(runs: dict, tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks (gloo): each rank writes its random_states_<rank>.pkl without a barrier;
    the stamp waits for both, rank 0 writes it, and the resumed ranks end where an uninterrupted pair does."""
    plain = Run("acc_harness.py", [str(tmp_path / "plain")], tmp_path, ranks=2)
    killed = Run("acc_harness.py", [str(tmp_path / "killed"), "--envkit", "--stop-at", "4"], tmp_path, stop_token="SAVED 4", ranks=2)
    killed.finish()
    plain.finish()
    assert plain.code == 0, plain.describe()
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_0", "checkpoint_1"]
    for folder in checkpoints.iterdir():
        assert envkit.verify(folder).status == "ok"
        files = json.loads((folder / "envkit.json").read_text())["files"]
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(files)
    resumed = Run("acc_harness.py", [str(tmp_path / "killed"), "--envkit", "--resume"], tmp_path, ranks=2).finish()
    assert resumed.code == 0, resumed.describe()
    assert resumed.values("RESUME") == [f"{checkpoints / 'checkpoint_1'} 4"] * 2
    weights = set(plain.values("WEIGHTS"))
    assert len(weights) == 1 and set(resumed.values("WEIGHTS")) == weights
    assert envkit.verify(checkpoints / "checkpoint_2").status == "ok"


# --- in this process: a real Accelerator on the CPU --------------------------------------------------


@pytest.fixture
def setup() -> tuple:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return accelerator, model, optimizer


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer.state_dict()["state"].items()})


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and all(
        torch.equal(a[1][k][n], b[1][k][n]) for k in a[1] for n in a[1][k])


def test_corrupt_folder_is_refused_before_load_state_restores_anything(setup: tuple, tmp_path: Path) -> None:
    from envkit.integrations.accelerate import attach

    accelerator, model, optimizer = setup
    attach(accelerator)
    accelerator.save_state(str(tmp_path / "ckpt"))
    assert envkit.verify(tmp_path / "ckpt").status == "ok"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    moved = _state(model, optimizer)
    data = bytearray((tmp_path / "ckpt" / "optimizer.bin").read_bytes())
    data[-40] ^= 0xFF
    (tmp_path / "ckpt" / "optimizer.bin").write_bytes(bytes(data))
    rng = torch.get_rng_state()
    with pytest.raises(CorruptCheckpoint, match="optimizer.bin"):
        accelerator.load_state(str(tmp_path / "ckpt"))
    assert _same(_state(model, optimizer), moved) and torch.equal(torch.get_rng_state(), rng)


def test_saving_again_into_a_folder_unstamps_it_first(setup: tuple, tmp_path: Path) -> None:
    """save_state writes in place: a save that dies midway must not leave the old stamp vouching for new files."""
    from envkit.integrations.accelerate import attach

    accelerator, model, optimizer = setup
    attachment = attach(accelerator)
    folder = tmp_path / "latest"
    accelerator.save_state(str(folder))
    first = attachment.last

    class Fails:
        def state_dict(self) -> dict:
            raise RuntimeError("disk full")

        def load_state_dict(self, state: dict) -> None: ...

    accelerator.register_for_checkpointing(Fails())  # saved after the models, optimizers and RNG
    with pytest.raises(RuntimeError, match="disk full"):
        accelerator.save_state(str(folder))
    assert not (folder / "envkit.json").exists() and envkit.verify(folder).status == "unstamped"
    accelerator._custom_objects.clear()
    accelerator.save_state(str(folder))
    assert envkit.verify(folder).status == "ok" and attachment.last is not first


def test_attach_twice_is_refused_and_detach_undoes_it(setup: tuple, tmp_path: Path) -> None:
    from accelerate import Accelerator

    from envkit.integrations.accelerate import attach

    accelerator, _, _ = setup
    attachment = attach(accelerator)
    with pytest.raises(BadInput, match="already attached"):
        attach(accelerator)
    assert len(accelerator._save_model_state_pre_hook) == 1 and len(accelerator._load_model_state_pre_hook) == 1
    attachment.detach()
    assert accelerator._save_model_state_pre_hook == {} and accelerator._load_model_state_pre_hook == {}
    assert accelerator.save_state.__func__ is Accelerator.save_state
    accelerator.save_state(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "envkit.json").exists()
    attach(accelerator).detach()  # attachable again


def test_missing_accelerate_is_one_line_naming_the_extra() -> None:
    code = ("import sys; sys.modules['accelerate'] = None\n"
            "try:\n    import envkit.integrations.accelerate\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc.exit_code, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    name, exit_code, message = done.stdout.strip().split(" ", 2)
    assert name == MissingExtra.__name__ and exit_code == "2"
    assert "pip install 'envkit[transformers]'" in message and "\n" not in message
