"""The HF Trainer with envkit: every checkpoint-<step>/ stamped, a killed run resumed from a stamped one
to the uninterrupted run's weights, a resume refused against another torch, half-written and corrupt
folders passed over, and `envkit check` on a folder written without envkit.

Real processes (tests/integrations/hf_harness.py: a config-built BERT, no hub), real SIGKILL, the
real `envkit` command line. Two runs start together: one uninterrupted and without envkit (the
baseline weights and an unstamped output_dir), one with the callback that is killed after the save
at step 4. The folder tests below run guard_resume on copies of those folders, without transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import envkit
from envkit.errors import BadInput, CheckpointSkippedWarning, CorruptCheckpoint, EnvironmentDriftWarning, MissingExtra
from envkit.integrations.resume import guard_resume
from tests.integrations.runs import ROOT, Run, assert_check_reads_no_pickle, fake_newer_torch, tree

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

STEPS, STOP_AT = 8, 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("hf")
    plain = Run("hf_harness.py", [str(tmp / "plain"), "--steps", str(STEPS), "--limit", "2"], tmp)
    killed = Run("hf_harness.py", [str(tmp / "killed"), "--steps", str(STEPS), "--limit", "2", "--envkit",
                                   "--stop-at", str(STOP_AT)], tmp, stop_token=f"SAVED {STOP_AT}")
    killed.finish()
    plain.finish()
    assert plain.code == 0, plain.describe()
    pristine = tmp / "pristine"  # the killed run's output_dir as the kill left it, for the folder tests
    shutil.copytree(tmp / "killed", pristine)
    return {"tmp": tmp, "plain": plain, "killed": killed, "pristine": pristine}


def test_callback_stamps_every_checkpoint_after_rotation(runs: dict) -> None:
    out = runs["pristine"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    for step in (2, 4):
        folder = out / f"checkpoint-{step}"
        assert envkit.verify(folder).status == "ok"
        meta = envkit.read_stamp(folder).stamp.meta
        assert meta["step"] == step and meta["epoch_progress"] == pytest.approx(step * 4 / 24) and meta["epoch"] == 0 and meta["framework"] == "transformers"
        # the stamp lists every file the Trainer wrote, weights, optimizer, RNG and state included
        files = json.loads((folder / "envkit.json").read_text())["files"]
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "config.json"} <= set(files)
        assert set(files) == {p.name for p in folder.iterdir()} - {"envkit.json"}
    assert envkit.check(out / "checkpoint-4").verdict == "ok"


def test_killed_run_resumes_from_the_stamped_checkpoint_to_the_same_weights(runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["pristine"], out)
    resumed = Run("hf_harness.py", [str(out), "--steps", str(STEPS), "--limit", "2", "--envkit", "--resume"], runs["tmp"]).finish()
    assert resumed.code == 0, resumed.describe()
    assert resumed.value("RESUME") == str(out / f"checkpoint-{STOP_AT}")
    assert resumed.value("WEIGHTS") == runs["plain"].value("WEIGHTS")  # the Trainer resumes bit-exactly
    # the resumed run went on stamping, and rotation (save_total_limit=2) left the two newest
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert all(envkit.verify(out / n).status == "ok" for n in ("checkpoint-6", "checkpoint-8"))
    assert envkit.read_stamp(out / "checkpoint-8").stamp.meta["step"] == 8


def test_resume_against_another_torch_minor_is_refused_before_any_weight_changes(runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["pristine"], out)
    fakes = {fake_newer_torch(out / n) for n in ("checkpoint-2", "checkpoint-4")}
    assert envkit.verify(out / "checkpoint-4").status == "ok"  # whole: only the environment differs
    before = tree(out)
    refused = Run("hf_harness.py", [str(out), "--steps", str(STEPS), "--envkit", "--resume"], runs["tmp"]).finish()
    assert refused.code == 3, refused.describe()
    digest, error = refused.value("REFUSED").split(" ", 1)
    assert error.startswith("EnvironmentMismatch:") and "torch.version" in error and fakes.pop() in error
    assert digest == refused.value("INIT")  # the model still holds its fresh weights: nothing was loaded
    assert digest != runs["plain"].value("WEIGHTS")
    assert tree(out) == before  # no file read into the run was changed, no checkpoint written


def test_resume_with_strict_policy_refuses_an_unstamped_folder(runs: dict) -> None:
    plain = runs["tmp"] / "plain"
    with pytest.raises(envkit.EnvironmentMismatch, match="stamp"):
        guard_resume(plain / "checkpoint-8", policy="strict")


# --- which folder guard_resume takes (copies of the real folders; no transformers here) -----------------


@pytest.fixture
def out(runs: dict, tmp_path: Path) -> Path:
    dest = tmp_path / "out"
    shutil.copytree(runs["pristine"], dest)
    return dest


def _half_written(src: Path, dest: Path) -> None:
    """What a kill during the Trainer's save leaves: some files, one cut short, no trainer_state.json, no stamp."""
    dest.mkdir()
    for name in ("config.json", "model.safetensors", "optimizer.pt"):
        shutil.copy(src / name, dest / name)
    data = (dest / "optimizer.pt").read_bytes()
    (dest / "optimizer.pt").write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_guard_resume_passes_over_half_written_and_corrupt_folders(out: Path) -> None:
    _half_written(out / "checkpoint-4", out / "checkpoint-10")
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-8")
    _flip_byte(out / "checkpoint-8" / "model.safetensors")
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / "extra.bin").write_bytes(b"not written by the Trainer")
    with pytest.warns(CheckpointSkippedWarning) as seen:
        chosen = guard_resume(out)
    assert chosen == str(out / "checkpoint-4")
    text = " | ".join(str(w.message) for w in seen)
    assert "checkpoint-10" in text and "checkpoint-8" in text and "checkpoint-6" in text
    assert "model.safetensors" in text and "extra.bin" in text


def test_guard_resume_orders_by_step_number_not_by_name_or_mtime(out: Path) -> None:
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-10")  # "checkpoint-10" < "checkpoint-4" as text
    stamp = json.loads((out / "checkpoint-10" / "envkit.json").read_text())
    os.utime(out / "checkpoint-2", (2**31, 2**31))  # the newest mtime
    assert stamp["files"] and guard_resume(out) == str(out / "checkpoint-10")


def test_guard_resume_of_an_output_dir_with_a_folder_killed_before_its_stamp(out: Path) -> None:
    """The kill can fall between the Trainer's save and on_save: a complete folder without a stamp.
    An output_dir with stamped folders resumes the newest stamped one, never an unstamped one."""
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / "envkit.json").unlink()
    with pytest.warns(CheckpointSkippedWarning, match="checkpoint-6"):
        assert guard_resume(out) == str(out / "checkpoint-4")


def test_guard_resume_of_a_run_without_envkit_takes_the_newest_finished_folder_with_a_warning(runs: dict, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(runs["tmp"] / "plain", plain)
    _half_written(plain / "checkpoint-8", plain / "checkpoint-10")
    with pytest.warns(EnvironmentDriftWarning, match="stamp"), pytest.warns(CheckpointSkippedWarning, match="checkpoint-10"):
        assert guard_resume(plain) == str(plain / "checkpoint-8")


def test_guard_resume_of_a_named_folder(out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert guard_resume(out / "checkpoint-2") == str(out / "checkpoint-2")
    _flip_byte(out / "checkpoint-2" / "optimizer.pt")
    with pytest.raises(CorruptCheckpoint, match="optimizer.pt"):
        guard_resume(out / "checkpoint-2")  # named: never swapped for another folder


@pytest.mark.parametrize("damage", ["empty", "missing", "a file", "all corrupt", "malformed stamp"])
def test_guard_resume_bad_inputs_are_one_line_errors(out: Path, tmp_path: Path, damage: str) -> None:
    target, error = out, CorruptCheckpoint
    if damage == "empty":
        target, error = tmp_path / "empty", BadInput
        target.mkdir()
    elif damage == "missing":
        target, error = tmp_path / "nowhere", BadInput
    elif damage == "a file":
        target, error = out / "checkpoint-2" / "config.json", BadInput
    elif damage == "all corrupt":
        for n in ("checkpoint-2", "checkpoint-4"):
            _flip_byte(out / n / "model.safetensors")
    else:
        (out / "checkpoint-4" / "envkit.json").write_text("{not json")
        _flip_byte(out / "checkpoint-2" / "scheduler.pt")
    with pytest.raises(error) as info:
        guard_resume(target)
    assert "\n" not in str(info.value) and str(target) in str(info.value)


# --- envkit check on a folder the Trainer wrote without envkit -----------------------------------------


def test_envkit_check_on_an_unstamped_trainer_folder(runs: dict, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-8"
    shutil.copytree(runs["tmp"] / "plain" / "checkpoint-8", folder)
    assert_check_reads_no_pickle(folder, "training_args.bin", tmp_path)  # a pickle that runs code if loaded


# --- the callback in this process: background and synchronous stamps, errors ---------------------------


@pytest.fixture
def saved(runs: dict, tmp_path: Path) -> tuple:
    """A Trainer's checkpoint-8 folder without a stamp, with the TrainingArguments and TrainerState of that save."""
    from transformers import TrainerState, TrainingArguments

    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(runs["tmp"] / "plain" / "checkpoint-8", out / "checkpoint-8")
    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    state = TrainerState(global_step=8, epoch=1.3333, best_metric=0.25)
    return args, state, out / "checkpoint-8"


@pytest.mark.parametrize("background", [True, False])
def test_callback_stamps_in_a_thread_or_before_on_save_returns(saved: tuple, background: bool) -> None:
    from transformers import TrainerControl

    from envkit.integrations.transformers import EnvkitTrainerCallback

    args, state, folder = saved
    callback = EnvkitTrainerCallback(background=background)
    callback.on_save(args, state, TrainerControl())
    if not background:
        assert envkit.verify(folder).status == "ok"
    callback.on_train_end(args, state, TrainerControl())  # waits for a stamp in flight
    assert envkit.verify(folder).status == "ok" and callback.last is not None
    meta = dict(envkit.read_stamp(folder).stamp.meta)
    assert {k: meta[k] for k in ("step", "epoch", "framework", "metrics")} == {
        "step": 8, "epoch": 1, "framework": "transformers", "metrics": {"best_metric": 0.25}}


def test_callback_raises_a_failed_stamp_at_the_next_save_and_ignores_a_rotated_folder(saved: tuple, tmp_path: Path) -> None:
    from transformers import TrainerControl

    from envkit.integrations.transformers import EnvkitTrainerCallback

    args, state, folder = saved
    (tmp_path / "outside").write_text("x")
    (folder / "link.bin").symlink_to(tmp_path / "outside")  # a file the stamp cannot cover
    callback = EnvkitTrainerCallback()
    callback.on_save(args, state, TrainerControl())
    with pytest.raises(BadInput, match="link.bin"):
        callback.on_save(args, state, TrainerControl())
    assert not (folder / "envkit.json").exists()
    gone = folder.parent / "checkpoint-2"  # rotated away (save_total_limit=1) before its stamp ran
    callback._stamp(gone, {"step": 2})
    assert callback.wait() is None


def test_callback_in_a_process_that_does_not_save_writes_nothing_stand_in(saved: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank other than 0 cannot exist in this process: ``should_save`` (a property of the real
    TrainingArguments, False there) is set False as that rank sees it."""
    from transformers import TrainerControl, TrainingArguments

    from envkit.integrations.transformers import EnvkitTrainerCallback

    args, state, folder = saved
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))
    EnvkitTrainerCallback(background=False).on_save(args, state, TrainerControl())
    assert not (folder / "envkit.json").exists()


# --- the extra ----------------------------------------------------------------------------------------


def test_missing_transformers_is_one_line_naming_the_extra() -> None:
    code = ("import sys; sys.modules['transformers'] = None\n"
            "try:\n    import envkit.integrations.transformers\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc.exit_code, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    name, exit_code, message = done.stdout.strip().split(" ", 2)
    assert name == MissingExtra.__name__ and exit_code == "2"
    assert "pip install 'envkit[transformers]'" in message and "\n" not in message


def test_guard_resume_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, envkit.integrations.resume as r\n"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
