"""Framework checkpoint folders (issue 12, item 2): ``stamp_folder``, ``checkpoint_folders`` and the
read side (read_stamp, verify, check, guard) over Hugging Face-, Accelerate- and Lightning-shaped
folders built here from real files (torch.save, safetensors' save_file, json), and the
``envkit.folder/1`` and sharded fixtures in tests/data."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import envkit
from envkit.errors import BadInput, CorruptCheckpoint, EnvironmentMismatch, MalformedStamp, NotACheckpoint

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
DATA = Path(__file__).resolve().parents[1] / "data"
STAMP_NAME = "envkit.json"  # the on-disk format, spelt out: the commit marker's name ...
LAYOUT = "envkit.folder/1"  # ... and the layout of its files map


def stamp_folder(path: Path, **kwargs: object) -> envkit.Stamp:
    return envkit.stamp_folder(path, **kwargs)  # type: ignore[no-any-return]


def checkpoint_folders(path: Path) -> list[tuple[int, Path]]:
    return envkit.checkpoint_folders(path)  # type: ignore[no-any-return]


class _Executes:
    """A pickle that creates a file when it is unpickled: proof that nothing unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.marker), "w"))


def hf_folder(folder: Path, *, step: int = 10, marker: Path | None = None) -> Path:
    """What transformers.Trainer writes into checkpoint-<step>/ (the weights as model.safetensors)."""
    folder.mkdir(parents=True)
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    safetensors_torch.save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save({"last_epoch": step, "_step_count": step + 1}, folder / "scheduler.pt")
    torch.save({"python": 1, "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.5, "log_history": [{"loss": 0.5}]}))
    (folder / "config.json").write_text(json.dumps({"transformers_version": "4.57.1", "torch_dtype": "float32", "model_type": "tiny"}))
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Executes(marker or folder.parent / "EXECUTED")))
    return folder


def accelerate_folder(folder: Path) -> Path:
    """What Accelerator.save_state writes (automatic naming: checkpoints/checkpoint_<n>)."""
    folder.mkdir(parents=True)
    model = torch.nn.Linear(2, 2)
    safetensors_torch.save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    torch.save(torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), folder / "optimizer.bin")
    torch.save({"last_epoch": 0}, folder / "scheduler.bin")
    torch.save({"random_state": [1, 2, 3], "torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
    return folder


def lightning_deepspeed_folder(folder: Path) -> Path:
    """A distributed Lightning checkpoint: a folder named like a .ckpt, with sub-folders."""
    (folder / "checkpoint").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}}, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text("checkpoint")
    return folder


def other_torch() -> envkit.Fingerprint:
    """This environment with an older torch minor: what the default policy refuses to resume."""
    from envkit.fingerprint import collect
    from envkit.fingerprint.schema import TorchInfo

    live = collect()
    major, minor = (live.torch.version or "2.0").split(".")[:2]
    return dataclasses.replace(live, torch=TorchInfo(version=f"{major}.{max(int(minor) - 1, 0)}.0", cuda=live.torch.cuda, cudnn=live.torch.cudnn))


# -- stamping and reading back ------------------------------------------------------------------


def test_a_stamped_hf_folder_reads_verifies_checks_and_guards(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "out" / "checkpoint-10")
    stamp = stamp_folder(folder)
    assert stamp.meta["framework"] == "transformers" and stamp.meta["step"] == 10  # trainer_state.json's global_step
    doc = json.loads((folder / STAMP_NAME).read_text())
    assert doc["layout"] == LAYOUT and doc["schema"] == "envkit.stamp/1"
    assert sorted(doc["files"]) == sorted(["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                            "trainer_state.json", "config.json", "training_args.bin"])
    assert all(r["size"] == (folder / n).stat().st_size for n, r in doc["files"].items())
    info = envkit.read_stamp(folder)
    assert info.format == "folder" and info.stamped and info.stamp == stamp and info.stamp_source == "file"
    assert info.size == sum(r["size"] for r in doc["files"].values())
    assert envkit.verify(folder).status == "ok"
    assert envkit.check(folder).verdict == "ok"
    assert envkit.guard(folder).verdict == "ok"
    with pytest.raises(EnvironmentMismatch):
        envkit.guard(folder, live=other_torch())
    assert not (tmp_path / "out" / "EXECUTED").exists()  # training_args.bin is hashed, never unpickled


def test_the_step_comes_from_meta_then_trainer_state_then_the_name(tmp_path: Path) -> None:
    a = hf_folder(tmp_path / "checkpoint-10", step=7)  # trainer_state.json says 7: it wins over the name
    assert stamp_folder(a).meta["step"] == 7
    b = hf_folder(tmp_path / "checkpoint-20")
    assert stamp_folder(b, meta={"step": 3, "epoch": 1}, framework="mine").meta == {**stamp_folder(b).meta}
    assert envkit.read_stamp(b).stamp.meta["step"] == 3 and envkit.read_stamp(b).stamp.meta["framework"] == "mine"
    c = accelerate_folder(tmp_path / "checkpoints" / "checkpoint_4")
    meta = stamp_folder(c).meta
    assert meta["framework"] == "accelerate" and meta["step"] == 4
    d = lightning_deepspeed_folder(tmp_path / "epoch=1-step=500.ckpt")
    meta = stamp_folder(d).meta
    assert meta["framework"] == "lightning" and meta["step"] == 500


def test_sub_folders_are_keyed_by_relative_paths_and_verified(tmp_path: Path) -> None:
    folder = lightning_deepspeed_folder(tmp_path / "last.ckpt")
    stamp_folder(folder)
    files = json.loads((folder / STAMP_NAME).read_text())["files"]
    assert "checkpoint/mp_rank_00_model_states.pt" in files and "latest" in files
    assert envkit.verify(folder).status == "ok"
    (folder / "checkpoint" / "stray.pt").write_bytes(b"x")
    result = envkit.verify(folder)
    assert result.status == "corrupt" and "checkpoint/stray.pt is not one of the files" in result.problem
    (folder / "checkpoint" / "stray.pt").unlink()
    (folder / "checkpoint" / "deeper").mkdir()  # an empty folder holds no file: not a difference
    assert envkit.verify(folder).status == "ok"


def test_a_link_to_a_file_inside_the_folder_is_hashed_as_that_file(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "checkpoint-1")
    (folder / "blobs").mkdir()
    os.replace(folder / "model.safetensors", folder / "blobs" / "abc123")
    (folder / "model.safetensors").symlink_to("blobs/abc123")  # the Hub cache's layout
    stamp_folder(folder)
    files = json.loads((folder / STAMP_NAME).read_text())["files"]
    assert files["model.safetensors"] == files["blobs/abc123"]
    assert envkit.verify(folder).status == "ok"
    (folder / "blobs" / "abc123").write_bytes(b"changed")
    assert envkit.verify(folder).status == "corrupt"
    (folder / "sub").symlink_to(folder / "blobs")
    with pytest.raises(BadInput, match="a symbolic link to a folder"):
        stamp_folder(folder)


def _missing(f: Path) -> None:
    (f / "optimizer.pt").unlink()


def _extra(f: Path) -> None:
    (f / "pytorch_model.bin").write_bytes(b"weights")


def _truncated(f: Path) -> None:
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[:-8])


def _changed(f: Path) -> None:
    data = bytearray((f / "optimizer.pt").read_bytes())
    data[200] ^= 0x01
    (f / "optimizer.pt").write_bytes(bytes(data))


def _link_out(f: Path) -> None:
    (f.parent / "elsewhere.pt").write_bytes((f / "scheduler.pt").read_bytes())
    (f / "scheduler.pt").unlink()
    (f / "scheduler.pt").symlink_to(f.parent / "elsewhere.pt")


def _edited_manifest(f: Path) -> None:
    doc = json.loads((f / STAMP_NAME).read_text())
    doc["files"]["config.json"]["size"] += 1
    (f / STAMP_NAME).write_text(json.dumps(doc))


@pytest.mark.parametrize(("damage", "says"), [
    (_missing, "optimizer.pt is missing"),
    (_extra, "pytorch_model.bin is not one of the files the stamp lists"),
    (_truncated, "model.safetensors is"),
    (_changed, "optimizer.pt digest mismatch"),
    (_link_out, "scheduler.pt is a symbolic link leading out of the folder"),
    (_edited_manifest, "does not match the stamp's digest"),
])
def test_every_kind_of_damage_is_corrupt(tmp_path: Path, damage: object, says: str) -> None:
    folder = stamp_and_return(hf_folder(tmp_path / "checkpoint-10"))
    damage(folder)  # type: ignore[operator]
    result = envkit.verify(folder)
    assert result.status == "corrupt" and result.exit_code == 1 and says in (result.problem or "")
    envkit.read_stamp(folder)  # the stamp itself still reads: read_stamp hashes nothing
    kept = (folder / STAMP_NAME).read_bytes()
    with pytest.raises((CorruptCheckpoint, BadInput)):  # exit 1 (changed files) or 2 (a link out: never stampable)
        stamp_folder(folder, replace=False)  # a damaged folder is not re-blessed by `envkit stamp`
    assert (folder / STAMP_NAME).read_bytes() == kept


def stamp_and_return(folder: Path) -> Path:
    stamp_folder(folder)
    return folder


@pytest.mark.parametrize(("content", "says"), [
    (b"{not json", "not valid JSON"),
    (b" " * (8 * 1024 * 1024 + 1), "over the"),
    (b"[1, 2]", "not a JSON object"),
])
def test_a_damaged_envkit_json_is_bad_input(tmp_path: Path, content: bytes, says: str) -> None:
    folder = stamp_and_return(hf_folder(tmp_path / "checkpoint-1"))
    (folder / STAMP_NAME).write_bytes(content)
    with pytest.raises(MalformedStamp, match=says):
        envkit.read_stamp(folder)
    assert envkit.verify(folder).status == "unreadable"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "./model.safetensors", "a//b", STAMP_NAME, ""])
def test_a_manifest_naming_paths_outside_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    folder = stamp_and_return(hf_folder(tmp_path / "checkpoint-1"))
    doc = json.loads((folder / STAMP_NAME).read_text())
    doc["files"][name] = {"size": 1, "digest": "xxh3_128:00"}
    (folder / STAMP_NAME).write_text(json.dumps(doc))
    with pytest.raises(MalformedStamp, match="list of files names"):
        envkit.read_stamp(folder)
    assert envkit.verify(folder).status == "unreadable"


def test_an_unknown_layout_asks_for_a_newer_envkit(tmp_path: Path) -> None:
    folder = stamp_and_return(hf_folder(tmp_path / "checkpoint-1"))
    doc = json.loads((folder / STAMP_NAME).read_text())
    (folder / STAMP_NAME).write_text(json.dumps({**doc, "layout": "envkit.folder/9"}))
    with pytest.raises(MalformedStamp, match="upgrade envkit"):
        envkit.read_stamp(folder)


# -- re-stamping ----------------------------------------------------------------------------------


def test_restamping_unchanged_files_writes_nothing_and_changed_files_restamps(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "checkpoint-10")
    first = stamp_folder(folder)
    before = (folder / STAMP_NAME).stat()
    assert stamp_folder(folder) == first
    after = (folder / STAMP_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    # the Trainer saves into the same checkpoint-<step> again: the folder is stamped afresh
    torch.save({"last_epoch": 99}, folder / "scheduler.pt")
    assert envkit.verify(folder).status == "corrupt"
    second = stamp_folder(folder)
    assert second.payload != first.payload and envkit.verify(folder).status == "ok"
    # replace=False (what `envkit stamp` does without --restamp) refuses and leaves the stamp alone
    torch.save({"last_epoch": 100}, folder / "scheduler.pt")
    kept = (folder / STAMP_NAME).read_bytes()
    with pytest.raises(CorruptCheckpoint, match="--restamp"):
        stamp_folder(folder, replace=False)
    assert (folder / STAMP_NAME).read_bytes() == kept


def _no_stamp_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith((STAMP_NAME, f".{STAMP_NAME}")))


@pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")
def test_stamping_refuses_what_it_cannot_cover_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such folder"):
        stamp_folder(tmp_path / "missing")
    (tmp_path / "file.pt").write_bytes(b"x")
    with pytest.raises(BadInput, match="not a folder"):
        stamp_folder(tmp_path / "file.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no checkpoint file"):
        stamp_folder(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("hello")
    with pytest.raises(BadInput, match="no checkpoint file"):
        stamp_folder(tmp_path / "docs")
    (tmp_path / "x.dcp").mkdir()
    with pytest.raises(BadInput, match="sharded"):
        stamp_folder(tmp_path / "x.dcp")
    linked = hf_folder(tmp_path / "checkpoint-1")
    (linked / "extra.pt").symlink_to(tmp_path / "file.pt")
    with pytest.raises(BadInput, match="leading out of the folder"):
        stamp_folder(linked)
    assert _no_stamp_files(linked) == []
    piped = hf_folder(tmp_path / "checkpoint-2")
    os.mkfifo(piped / "pipe")
    with pytest.raises(BadInput, match="named pipe"):
        stamp_folder(piped)  # refused before anything is opened: nothing blocks
    assert _no_stamp_files(piped) == []
    out = tmp_path / "out"
    hf_folder(out / "checkpoint-7")
    with pytest.raises(BadInput, match="stamp each of them"):
        stamp_folder(out)  # an output_dir is not one checkpoint
    with envkit.CheckpointManager(tmp_path / "managed", project="p") as mgr:
        mgr.save(epoch=0, step=1, model=torch.nn.Linear(2, 2))
    with pytest.raises(BadInput, match="CheckpointManager's folder"):
        stamp_folder(tmp_path / "managed")
    assert not (out / STAMP_NAME).exists() and not (tmp_path / "managed" / STAMP_NAME).exists()
    bad_meta = hf_folder(tmp_path / "checkpoint-3")
    with pytest.raises(BadInput, match="meta 'step'"):
        stamp_folder(bad_meta, meta={"step": "ten"})
    assert _no_stamp_files(bad_meta) == []


def test_a_failed_write_simulated_enospc_leaves_no_partial_envkit_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk filling up during the rename cannot be made here: os.replace raising ENOSPC stands for it."""
    import errno

    folder = hf_folder(tmp_path / "checkpoint-1")
    real_replace = os.replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(BadInput, match="nothing was stamped"):
        stamp_folder(folder)
    monkeypatch.setattr(os, "replace", real_replace)
    assert _no_stamp_files(folder) == []
    assert envkit.verify(folder).status == "unstamped"


# -- output folders -------------------------------------------------------------------------------


def test_checkpoint_folders_are_sorted_by_step_never_by_mtime(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for step in (5, 100, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    (out / "tmp-checkpoint-200").mkdir()  # a save in progress
    (out / "checkpoint-300").write_text("a file, not a folder")
    (out / "checkpoint-abc").mkdir()
    os.utime(out / "checkpoint-5", (2_000_000_000, 2_000_000_000))  # the newest mtime, the oldest step
    from envkit.checkpoint.folder import FolderEntry

    found = checkpoint_folders(out)
    assert [e.step for e in found] == [100, 10, 5]  # type: ignore[attr-defined]
    assert found[0] == FolderEntry(100, out / "checkpoint-100")
    step, path = found[-1]
    assert (step, path.name) == (5, "checkpoint-5")
    project = tmp_path / "project"
    for n in (0, 2, 11):
        (project / "checkpoints" / f"checkpoint_{n}").mkdir(parents=True)
    assert [step for step, _ in checkpoint_folders(project)] == [11, 2, 0]
    assert [step for step, _ in checkpoint_folders(project / "checkpoints")] == [11, 2, 0]
    assert checkpoint_folders(tmp_path / "project" / "checkpoints" / "checkpoint_0") == []
    with pytest.raises(BadInput, match="no such folder"):
        checkpoint_folders(tmp_path / "nope")
    from envkit.checkpoint import folder

    assert envkit.checkpoint_folders is folder.checkpoint_folders and envkit.stamp_folder is folder.stamp_folder


# -- unstamped folders ----------------------------------------------------------------------------


def test_an_unstamped_hf_folder_is_unstamped_with_what_its_files_prove(tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    folder = hf_folder(tmp_path / "checkpoint-10", marker=marker)
    info = envkit.read_stamp(folder)
    assert info.format == "folder" and not info.stamped
    assert envkit.verify(folder).status == "unstamped"
    report = envkit.check(folder)
    assert report.verdict != "refuse" and report.exit_code() == 0
    evidence = report.evidence
    assert evidence is not None
    assert evidence["config.json"] == {"transformers_version": "4.57.1", "torch_dtype": "float32", "model_type": "tiny"}
    assert evidence["model.safetensors"] == {"metadata": {"format": "pt"}}
    assert evidence["optimizer.pt"]["serialization_version"] == "3" and evidence["optimizer.pt"]["byteorder"] == "little"
    assert evidence["optimizer.pt"]["serialization_id"]
    assert evidence["trainer_state.json"]["global_step"] == 10
    assert evidence["(folder)"] == {"framework": "transformers"}
    assert "training_args.bin" not in evidence and "rng_state.pth" not in evidence
    assert report.to_json()["evidence"] == evidence and report.to_json()["stamped"] is False
    envkit.inspect_checkpoint(folder)
    assert not marker.exists()  # nothing was unpickled


def test_evidence_survives_hostile_files(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "checkpoint-1")
    (folder / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    (folder / "config.json").write_text("{nope")
    (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    (folder / "trainer_state.json").write_text("[]")
    evidence = envkit.check(folder).evidence
    assert "past the end" in evidence["model.safetensors"]["error"]
    assert "not a readable JSON object" in evidence["config.json"]["error"]
    assert "damaged or truncated zip" in evidence["optimizer.pt"]["error"]
    assert "not a readable JSON object" in evidence["trainer_state.json"]["error"]


def test_an_accelerate_folder_unstamped_then_stamped(tmp_path: Path) -> None:
    folder = accelerate_folder(tmp_path / "checkpoints" / "checkpoint_2")
    assert envkit.verify(folder).status == "unstamped"
    evidence = envkit.check(folder).evidence or {}
    assert evidence["optimizer.bin"]["format"] == "torch zip" and evidence["(folder)"] == {"framework": "accelerate"}
    stamp_folder(folder)
    assert envkit.verify(folder).status == "ok" and envkit.check(folder).evidence is None


def test_folders_that_hold_no_checkpoint_are_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    for folder in (tmp_path / "empty", tmp_path / "docs"):
        with pytest.raises(NotACheckpoint, match="no checkpoint in it"):
            envkit.read_stamp(folder)
        assert envkit.verify(folder).status == "unreadable"
    out = tmp_path / "out"
    hf_folder(out / "checkpoint-5")
    hf_folder(out / "checkpoint-50")
    with pytest.raises(NotACheckpoint, match="the newest is checkpoint-50"):
        envkit.read_stamp(out)
    (tmp_path / "interrupted.dcp").mkdir()
    torch.save({}, tmp_path / "interrupted.dcp" / "rank0.pt")
    with pytest.raises(NotACheckpoint, match="interrupted save"):
        envkit.read_stamp(tmp_path / "interrupted.dcp")


def test_inspect_lists_a_folders_safetensors_tensors_or_says_why_not(tmp_path: Path) -> None:
    from envkit.errors import EnvkitError

    folder = hf_folder(tmp_path / "checkpoint-1")
    (folder / "broken.safetensors").write_bytes(b"\xff" * 4)
    insp = envkit.inspect_checkpoint(folder)
    notes = insp.extra.get("notes", [])
    assert any(n.startswith("broken.safetensors: tensors not listed") for n in notes)
    assert insp.to_json()["notes"] == notes and insp.to_json()["records_total"] == 8
    try:
        own = envkit.inspect_checkpoint(folder / "model.safetensors")
    except EnvkitError:  # no safetensors reader in this envkit: the folder's inspection says so, file by file
        assert any(n.startswith("model.safetensors: tensors not listed") for n in notes)
    else:
        assert [t.name for t in insp.tensors] == [f"model.safetensors:{t.name}" for t in own.tensors] and own.tensors


def test_load_of_a_folder_is_bad_input_after_the_guard(tmp_path: Path) -> None:
    folder = stamp_and_return(hf_folder(tmp_path / "checkpoint-1"))
    with pytest.raises(BadInput, match="a checkpoint folder, not one file"):
        envkit.load(folder)


def test_large_files_hash_the_same_through_the_pipelined_reader(tmp_path: Path) -> None:
    """Files past PIPELINE_MIN_BYTES are read and hashed on two cores: the digest must not change."""
    import hashlib

    import xxhash

    from envkit.checkpoint.hashing import CHUNK, PIPELINE_MIN_BYTES, digest_of_file

    data = os.urandom(PIPELINE_MIN_BYTES + CHUNK // 2)
    (tmp_path / "big.bin").write_bytes(data)
    for length in (len(data), PIPELINE_MIN_BYTES, PIPELINE_MIN_BYTES + 1, len(data) + 10):
        with open(tmp_path / "big.bin", "rb") as fh:
            assert digest_of_file(fh, length, "xxh3_128") == f"xxh3_128:{xxhash.xxh3_128(data[:length]).hexdigest()}"
    with open(tmp_path / "big.bin", "rb") as fh:
        assert digest_of_file(fh, len(data), "sha256") == f"sha256:{hashlib.sha256(data).hexdigest()}"


# -- the fixtures: formats written by earlier envkit ----------------------------------------------


def test_a_sharded_folder_written_by_envkit_0_1_still_reads_and_verifies(tmp_path: Path) -> None:
    """tests/data/sharded-v1.dcp: written by the code of commit 3eaf2f3 (no ``layout`` field)."""
    folder = shutil.copytree(DATA / "sharded-v1.dcp", tmp_path / "sharded-v1.dcp")
    info = envkit.read_stamp(folder)
    assert info.format == "dcp" and info.stamp is not None and info.stamp.meta["step"] == 7
    assert "layout" not in json.loads((folder / STAMP_NAME).read_text())
    assert envkit.verify(folder).status == "ok"
    (folder / "sub").mkdir()  # the sharded layout compares the top-level names, as it always did
    assert "sub is not one of the files" in (envkit.verify(folder).problem or "")


def test_a_folder_stamp_of_layout_envkit_folder_1_still_reads_and_verifies(tmp_path: Path) -> None:
    """tests/data/folder-v1: an HF-shaped folder stamped by stamp_folder of this envkit (layout envkit.folder/1)."""
    folder = shutil.copytree(DATA / "folder-v1", tmp_path / "folder-v1")
    info = envkit.read_stamp(folder)
    assert info.format == "folder" and info.stamp is not None
    assert info.stamp.meta["step"] == 12 and info.stamp.meta["framework"] == "transformers" and info.stamp.meta["epoch"] == 3
    assert envkit.verify(folder).status == "ok"
    names = [name for name, _ in envkit.inspect_checkpoint(folder).records]
    assert names == ["config.json", "extra/notes.txt", "model.safetensors", "optimizer.pt", "trainer_state.json"]


# -- the command line, in real processes ----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def envkit_cli(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "envkit", *map(str, args)], capture_output=True, text=True, env=env, check=False)


@pytest.mark.slow
def test_stamp_ls_check_verify_inspect_diff_on_an_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    marker = tmp_path / "EXECUTED"
    old, new = hf_folder(out / "checkpoint-5", step=5, marker=marker), hf_folder(out / "checkpoint-10", marker=marker)
    done = envkit_cli("stamp", new)
    assert done.returncode == 0 and done.stdout.startswith(f"stamped {new}: 7 files") and "step 10" in done.stdout, done.stderr
    again = envkit_cli("stamp", "--json", new)
    assert again.returncode == 0 and json.loads(again.stdout)["written"] is False

    listing = envkit_cli("ls", "--json", out)
    assert listing.returncode == 0, listing.stderr
    rows = [(Path(r["checkpoint"]).name, r["step"], r["stamped"], r["valid"]) for r in json.loads(listing.stdout)["checkpoints"]]
    assert rows == [("checkpoint-5", 5, False, False), ("checkpoint-10", 10, True, True)]
    text = envkit_cli("ls", out).stdout.splitlines()
    assert text[1].split()[:3] == ["checkpoint-5", "-", "5"] and "unstamped" in text[1] and text[2].split()[5] == "yes"

    check = envkit_cli("check", old)
    assert check.returncode == 0 and "unstamped" in check.stdout and "transformers_version 4.57.1" in check.stdout
    assert "global_step 5" in check.stdout and "format=pt" in check.stdout
    as_json = json.loads(envkit_cli("check", "--json", old).stdout)
    assert as_json["stamped"] is False and as_json["format"] == "folder" and as_json["evidence"]["optimizer.pt"]["byteorder"] == "little"
    assert envkit_cli("check", "--fail-on", "warn", old).returncode == 1
    assert envkit_cli("check", "--verify", new).returncode == 0

    inspected = json.loads(envkit_cli("inspect", "--json", new).stdout)
    assert [r["name"] for r in inspected["records"]][:2] == ["config.json", "model.safetensors"] and inspected["stamped"] is True
    assert envkit_cli("diff", new, "live").returncode == 0

    _changed(new)
    verified = envkit_cli("verify", new, old)
    assert verified.returncode == 1 and "CORRUPT" in verified.stdout and "unstamped" in verified.stdout
    refused = envkit_cli("stamp", new)
    assert refused.returncode == 1 and "--restamp" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert envkit_cli("stamp", "--restamp", new).returncode == 0 and envkit_cli("verify", new).returncode == 0
    assert not marker.exists()


@pytest.mark.slow
def test_bad_folder_inputs_exit_2_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.pt").write_bytes(b"x")
    hf_folder(tmp_path / "out" / "checkpoint-3")
    bad = {}
    for name, content in (("notjson", b"{oops"), ("dotdot", None), ("absolute", None), ("huge", b" " * (8 * 1024 * 1024 + 1))):
        folder = stamp_and_return(hf_folder(tmp_path / name / "checkpoint-1"))
        if content is None:
            doc = json.loads((folder / STAMP_NAME).read_text())
            doc["files"]["../x" if name == "dotdot" else "/etc/passwd"] = {"size": 1, "digest": "xxh3_128:00"}
            content = json.dumps(doc).encode()
        (folder / STAMP_NAME).write_bytes(content)
        bad[name] = folder
    cases = [
        ("stamp", tmp_path / "missing"), ("stamp", tmp_path / "empty"), ("stamp", tmp_path / "file.pt"),
        ("check", tmp_path / "empty"), ("check", tmp_path / "out"), ("verify", tmp_path / "empty"),
        *[(command, folder) for folder in bad.values() for command in ("check", "verify", "inspect", "stamp")],
    ]
    for command, path in cases:
        done = envkit_cli(command, path)
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("envkit: error: ") and str(path) in lines[0], (
            command, path, done.stderr)
    assert os.listdir(tmp_path / "empty") == [] and not (tmp_path / "out" / STAMP_NAME).exists()
    assert (bad["notjson"] / STAMP_NAME).read_bytes() == b"{oops"  # a stamp that cannot be read is not overwritten by `stamp`


@pytest.mark.slow
def test_the_read_commands_and_stamp_do_not_import_torch_on_folders(tmp_path: Path) -> None:
    stamped = stamp_and_return(hf_folder(tmp_path / "out" / "checkpoint-2"))
    plain = hf_folder(tmp_path / "out" / "checkpoint-1")
    accelerate_folder(tmp_path / "acc")
    commands = [["check", plain], ["check", stamped], ["verify", stamped], ["inspect", plain], ["ls", tmp_path / "out"],
                ["diff", stamped, "live"], ["stamp", tmp_path / "acc"]]
    code = (
        "import sys\nfrom envkit.cli import main\nfor args in " + repr([[str(a) for a in c] for c in commands]) + ":\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert e.code == 0, (args, e.code)\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stderr.split()[-1] == "False", done.stderr
