"""Sharded (``.dcp``) checkpoints on object storage: a real S3 API server (moto's, on 127.0.0.1), s3fs over HTTP,
real torch.distributed.checkpoint on gloo ranks (a world of one in this process; two real rank processes).

Request counts and the order of requests are taken on the server's side (``s3server.S3Server.log``).
Run as a script (``python test_remote_sharded.py rank RANK WORLD PORT URL``) it is one rank of the two-rank test.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

import envkit  # noqa: E402
from envkit.checkpoint.listing import ObjectListing  # noqa: E402
from envkit.errors import CheckpointWriteError  # noqa: E402
from tests.checkpoint.s3server import S3Server, free_port  # noqa: E402
from tests.checkpoint.test_remote import _bytes_asked, _one_line_exit_2  # noqa: E402
from tests.distributed.ending import end_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")


def _boto(server: S3Server) -> object:
    import boto3

    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")


def _keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    listed = _boto(server).list_objects_v2(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _uploads(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in _boto(server).list_multipart_uploads(Bucket=bucket).get("Uploads", [])]  # type: ignore[attr-defined]


def _envkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _fs() -> object:
    from envkit.checkpoint import remote

    return remote.filesystem("s3", "s3://any")


def _make(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 2))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, generator: torch.Generator | None = None) -> None:
    for _ in range(steps):
        loss = model(torch.randn(4, 6, generator=generator)).pow(2).mean()  # the global RNG unless a generator is given
        opt.zero_grad()
        loss.backward()
        opt.step()


def _same(a: object, b: object) -> bool:
    """Equal nested state dicts, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


DCP_FILES = [".metadata", "__0_0.distcp", "envkit.json", "rank0.pt"]


# -- save, list, retain, resume ---------------------------------------------------------------


def test_sharded_manager_on_a_bucket_saves_lists_retains_and_resumes_bit_identically(bucket: str, s3_server: S3Server,
                                                                                      one_rank: None) -> None:
    url = f"s3://{bucket}/run"
    model, opt = _make(0)
    with envkit.CheckpointManager(url, project="p", sharded=True, keep_last=2) as mgr:
        for step in (1, 2, 3):
            _train(model, opt, 1)
            assert str(mgr.save(epoch=0, step=step, metrics={"loss": 1.0 / step}, model=model, optimizer=opt)) == \
                f"{url}/p_0000_0000000{step}.dcp"
        assert [i.step for i in mgr.list()] == [2, 3] and all(i.valid for i in mgr.list())
        latest = mgr.latest()
        assert latest is not None and latest.step == 3 and str(latest.path) == f"{url}/p_0000_00000003.dcp"
    _train(model, opt, 2)  # the uninterrupted run goes on from step 3 (its RNG included)
    expected = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert _keys(s3_server, bucket, "run/") == ["run/.envkit-index.json"] + [
        f"run/p_0000_0000000{step}.dcp/{name}" for step in (2, 3) for name in DCP_FILES]
    assert _uploads(s3_server, bucket) == []

    s3_server.reset_log()
    rows = _envkit("ls", url, "--json")
    assert rows.returncode == 0, rows.stderr
    assert [r["step"] for r in json.loads(rows.stdout)["checkpoints"]] == [2, 3]
    assert not [r for r in s3_server.log() if ".dcp/" in r.path], s3_server.log()  # the index and LISTs: no stamp, no shard

    fresh, fresh_opt = _make(7)
    with envkit.CheckpointManager(url, project="p", sharded=True) as again:
        info = again.resume(model=fresh, optimizer=fresh_opt)
        assert info is not None and info.step == 3 and str(info.path) == f"{url}/p_0000_00000003.dcp"
    _train(fresh, fresh_opt, 2)
    assert _same(fresh.state_dict(), expected[0]) and _same(fresh_opt.state_dict(), expected[1])


def test_sharded_resume_from_a_bucket_fetches_each_file_once(bucket: str, s3_server: S3Server, one_rank: None) -> None:
    """rank 0's verify streams the prefix's files into $TMPDIR, and its load reads them there (before: twice each)."""
    url = f"s3://{bucket}/once"
    model, opt = _make(0)
    _train(model, opt, 2)
    with envkit.CheckpointManager(url, project="p", sharded=True) as mgr:
        mgr.save(epoch=0, step=2, model=model, optimizer=opt)
    listed = _boto(s3_server).list_objects_v2(Bucket=bucket, Prefix="once/p_0000_00000002.dcp/")  # type: ignore[attr-defined]
    sizes = {o["Key"]: int(o["Size"]) for o in listed["Contents"] if not o["Key"].endswith("envkit.json")}
    s3_server.reset_log()
    fresh, fresh_opt = _make(7)
    with envkit.CheckpointManager(url, project="p", sharded=True) as again:
        assert again.resume(model=fresh, optimizer=fresh_opt).step == 2  # type: ignore[union-attr]
    assert _same(fresh.state_dict(), model.state_dict()) and _same(fresh_opt.state_dict(), opt.state_dict())
    assert {key: _bytes_asked(s3_server, key) for key in sizes} == sizes


# -- faults: nothing half-written, the previous checkpoint latest ------------------------------


@pytest.mark.parametrize("fails", ["a shard's multipart upload", "the commit marker's PUT"])
def test_a_sharded_save_that_fails_mid_upload_leaves_the_previous_checkpoint_latest(fails: str, bucket: str, s3_server: S3Server,
                                                                                     one_rank: None,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure is injected into the client; the server is real. keep_last=1: retention must not have run."""
    import s3fs

    url = f"s3://{bucket}/run"
    model, opt = _make(0)
    with envkit.CheckpointManager(url, project="p", sharded=True, keep_last=1) as mgr:
        mgr.save(epoch=0, step=1, model=model, optimizer=opt)
        with monkeypatch.context() as patched:
            if fails.startswith("a shard"):
                real, calls = s3fs.core.S3File._upload_chunk, []

                def failing(self: object, final: bool = False) -> object:
                    calls.append(final)
                    if len(calls) == 2:  # the second file of this save: its part is being sent
                        raise ConnectionResetError("injected: the connection dropped")
                    return real(self, final)

                patched.setattr(s3fs.core.S3File, "_upload_chunk", failing)
            else:
                fs = mgr.storage.fs  # type: ignore[attr-defined]
                real_pipe = fs.pipe_file

                def failing_pipe(path: str, data: bytes, **kwargs: object) -> object:
                    if path.endswith("/envkit.json"):
                        raise ConnectionResetError("injected: the connection dropped")
                    return real_pipe(path, data, **kwargs)

                patched.setattr(fs, "pipe_file", failing_pipe)
            with pytest.raises(CheckpointWriteError, match="earlier checkpoints are untouched"):
                _train(model, opt, 1)
                mgr.save(epoch=0, step=2, model=model, optimizer=opt)
        assert _keys(s3_server, bucket, "run/p_") == [f"run/p_0000_00000001.dcp/{n}" for n in DCP_FILES]  # nothing of step 2
        assert _uploads(s3_server, bucket) == []  # aborted, not left to bill
        latest = mgr.latest()
        assert latest is not None and latest.step == 1 and latest.valid
        mgr.save(epoch=0, step=2, model=model, optimizer=opt)  # the next save works, and only now retention deletes step 1
        assert [i.step for i in mgr.list()] == [2]


KILLED_CHILD = r"""
import os, signal, sys, warnings
import s3fs, torch, torch.distributed as dist
import envkit
warnings.simplefilter("ignore")
url, port = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
model = torch.nn.Linear(300, 300)
mgr = envkit.CheckpointManager(url, project="p", sharded=True, keep_last=1)
mgr.save(epoch=0, step=1, model=model)
real = s3fs.core.S3File._upload_chunk

def dying(self, final=False):
    out = real(self, final)
    if "p_0000_00000002.dcp/__0_" in self.path:  # the shard's part is stored; its upload is not completed
        os.kill(os.getpid(), signal.SIGKILL)
    return out

s3fs.core.S3File._upload_chunk = dying
print("saved step 1", flush=True)
mgr.save(epoch=0, step=2, model=model)
"""


@pytest.mark.slow
def test_kill_9_mid_upload_before_the_marker_leaves_an_invisible_prefix_that_the_next_manager_removes(
        tmp_path: Path, bucket: str, s3_server: S3Server, one_rank: None) -> None:
    url = f"s3://{bucket}/run"
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD)
    child = subprocess.run([sys.executable, str(script), url, str(free_port())], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == -9 and "saved step 1" in child.stdout, child.stderr[-2000:]
    partial = "run/p_0000_00000002.dcp/"
    assert _keys(s3_server, bucket, partial) == [f"{partial}.metadata"]  # what the dead writer completed
    assert _uploads(s3_server, bucket) == [f"{partial}__0_0.distcp"]  # and the upload it never completed
    assert list(ObjectListing.for_url(url).committed_sizes()) == ["p_0000_00000001.dcp"]  # not listed
    rows = _envkit("ls", url, "--json")
    assert rows.returncode == 0 and [r["step"] for r in json.loads(rows.stdout)["checkpoints"]] == [1], rows.stderr
    _one_line_exit_2(_envkit("check", f"{url}/p_0000_00000002.dcp"), "not a committed sharded checkpoint")

    _fs().pipe_file(f"{bucket}/run/notes.dcp/README.txt", b"mine")  # type: ignore[attr-defined]  # not a dead writer's: kept
    model = torch.nn.Linear(300, 300)
    with envkit.CheckpointManager(url, project="p", sharded=True, keep_last=1) as mgr:  # the next writer cleans up
        assert {str(p) for p in mgr.removed_temp_files} == {f"s3://{bucket}/{partial}__0_0.distcp", f"{url}/p_0000_00000002.dcp"}
        assert _keys(s3_server, bucket, partial) == [] and _uploads(s3_server, bucket) == []
        latest = mgr.latest()
        assert latest is not None and latest.step == 1
        info = mgr.resume(model=model)
        assert info is not None and info.step == 1
        mgr.save(epoch=0, step=2, model=model)
        assert [i.step for i in mgr.list()] == [2]
    assert _keys(s3_server, bucket, "run/notes.dcp/") == ["run/notes.dcp/README.txt"]


def test_retention_deletes_the_old_prefix_only_after_the_new_marker_is_confirmed(bucket: str, s3_server: S3Server,
                                                                                 one_rank: None) -> None:
    url = f"s3://{bucket}/run"
    model, _ = _make(0)
    with envkit.CheckpointManager(url, project="p", sharded=True, keep_last=1) as mgr:
        mgr.save(epoch=0, step=1, model=model)
        s3_server.reset_log()
        mgr.save(epoch=0, step=2, model=model)
    log = s3_server.log()
    new_marker = [i for i, r in enumerate(log) if r.path.endswith("p_0000_00000002.dcp/envkit.json")]
    put, head = (next(i for i in new_marker if log[i].method == m) for m in ("PUT", "HEAD"))
    old = [i for i, r in enumerate(log) if "p_0000_00000001.dcp" in r.path + r.query and r.method in ("DELETE", "POST")]
    assert old and put < head < min(old), [(r.method, r.path, r.query) for r in log]  # the marker, confirmed, then deletes
    assert log[min(old)].method == "DELETE" and log[min(old)].path.endswith("p_0000_00000001.dcp/envkit.json")  # marker first
    shards = [i for i, r in enumerate(log) if r.method in ("PUT", "POST") and "p_0000_00000002.dcp/" in r.path
              and not r.path.endswith("envkit.json")]
    assert shards and max(shards) < put  # every file of the new one went up before its marker
    assert _keys(s3_server, bucket, "run/p_") == [f"run/p_0000_00000002.dcp/{n}" for n in DCP_FILES]


# -- the read commands on a .dcp URL -------------------------------------------------------------


def test_check_verify_inspect_of_a_dcp_url_read_its_marker(bucket: str, s3_server: S3Server, one_rank: None) -> None:
    url = f"s3://{bucket}/run"
    model, opt = _make(0)
    _train(model, opt, 1)
    with envkit.CheckpointManager(url, project="p", sharded=True) as mgr:
        dcp = str(mgr.save(epoch=1, step=5, model=model, optimizer=opt))
    s3_server.reset_log()
    assert envkit.check(dcp).verdict == "ok"
    assert [r.method for r in s3_server.log()] == ["GET"]  # envkit.json, one ranged GET: no HEAD, no LIST
    s3_server.reset_log()
    done = _envkit("check", dcp, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["verdict"] == "ok", done.stderr
    gets = [r for r in s3_server.log() if r.method == "GET"]
    assert len(gets) <= 2 and len(s3_server.log()) == len(gets), s3_server.log()
    shown = _envkit("inspect", dcp, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["format"] == "dcp" and doc["meta"]["step"] == 5 and doc["meta"]["world_size"] == 1
    assert sorted(r["name"] for r in doc["records"]) == [".metadata", "__0_0.distcp", "rank0.pt"]
    assert envkit.verify(dcp).ok and _envkit("verify", dcp).returncode == 0
    listed = _envkit("ls", dcp, "--json")  # the prefix is one checkpoint, not a folder of rank files
    assert listed.returncode == 0 and [(r["checkpoint"], r["step"]) for r in json.loads(listed.stdout)["checkpoints"]] == \
        [(dcp, 5)], listed.stdout + listed.stderr
    code = "import sys, envkit; print(envkit.check(sys.argv[1]).verdict, 'torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code, dcp], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert light.stdout.split() == ["ok", "False"], light.stderr  # the read path never imports torch
    with pytest.raises(envkit.errors.BadInput, match="a sharded checkpoint.*sharded=True"):
        envkit.load(dcp)

    key = f"{dcp.removeprefix('s3://')}/__0_0.distcp"
    good = bytes(_fs().cat_file(key))  # type: ignore[attr-defined]
    _fs().pipe_file(key, good[:-1] + bytes([good[-1] ^ 0xFF]))  # type: ignore[attr-defined]
    changed = _envkit("verify", dcp)
    assert changed.returncode == 1 and "__0_0.distcp digest mismatch" in changed.stdout + changed.stderr
    _fs().pipe_file(key, good[:-10])  # type: ignore[attr-defined]
    assert "truncated or changed" in (envkit.verify(dcp).problem or "")
    _fs().pipe_file(key, good)  # type: ignore[attr-defined]
    _fs().pipe_file(f"{dcp.removeprefix('s3://')}/stray.bin", b"x")  # type: ignore[attr-defined]
    extra = envkit.verify(dcp)
    assert extra.status == "corrupt" and "stray.bin is not one of the files the stamp lists" in (extra.problem or "")
    marker = f"{dcp.removeprefix('s3://')}/envkit.json"
    _fs().pipe_file(marker, b"{not json")  # type: ignore[attr-defined]
    _one_line_exit_2(_envkit("check", dcp), "envkit.json", "not valid JSON")
    assert envkit.verify(dcp).status == "corrupt"
    _fs().rm_file(marker)  # type: ignore[attr-defined]
    _one_line_exit_2(_envkit("check", dcp), "not a committed sharded checkpoint")
    assert envkit.verify(dcp).status == "unreadable"


def test_a_local_sharded_checkpoint_copied_to_a_bucket_checks_verifies_and_lists(tmp_path: Path, bucket: str, s3_server: S3Server,
                                                                                  one_rank: None) -> None:
    """What ``aws s3 cp --recursive`` of a local manager's folder gives: the same layout, read through its envkit.json."""
    model, _ = _make(0)
    with envkit.CheckpointManager(tmp_path / "local", project="c", sharded=True) as mgr:
        local = mgr.save(epoch=0, step=4, model=model)
    assert local is not None
    for f in local.iterdir():
        _fs().put_file(str(f), f"{bucket}/copied/{local.name}/{f.name}")  # type: ignore[attr-defined]
    url = f"s3://{bucket}/copied/{local.name}"
    s3_server.reset_log()
    assert envkit.read_stamp(url).stamp.meta["step"] == 4  # type: ignore[union-attr]
    assert len(s3_server.log()) == 1
    assert envkit.verify(url).ok
    rows = _envkit("ls", f"s3://{bucket}/copied", "--json")
    assert rows.returncode == 0 and [r["checkpoint"] for r in json.loads(rows.stdout)["checkpoints"]] == [url], rows.stderr
    with envkit.CheckpointManager(f"s3://{bucket}/copied", project="c", sharded=True) as again:
        fresh, _ = _make(3)
        info = again.resume(model=fresh)
        assert info is not None and info.step == 4 and _same(fresh.state_dict(), model.state_dict())


# -- two gloo ranks, one bucket ------------------------------------------------------------------


@pytest.mark.slow
def test_two_gloo_ranks_save_to_a_bucket_sharded_and_one_file_and_resume_exactly(bucket: str, s3_server: S3Server) -> None:
    url = f"s3://{bucket}/ddp"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, __file__, "rank", str(rank), "2", str(port), url], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        doc = json.loads(out.strip().splitlines()[-1])
        single = {"path": f"{url}-one/s_0000_00000002.pth", "step": 2, "rng": True, "model": True, "optimizer": True}
        assert doc == {"rank": doc["rank"], "path": f"{url}/d_0000_00000002.dcp", "step": 2, "model": True, "optimizer": True,
                       "rng": True, "trained": True, "single": single}, doc
    prefix = "ddp/d_0000_00000002.dcp/"
    names = [k.removeprefix(prefix) for k in _keys(s3_server, bucket, "ddp/")]
    assert names[0] == "ddp/.envkit-index.json" and {".metadata", "envkit.json", "rank0.pt", "rank1.pt"} <= set(names[1:])
    assert all(n.startswith(("__0_", "__1_", ".metadata", "envkit.json", "rank")) for n in names[1:]), names  # step 1 retained away
    assert _keys(s3_server, bucket, "ddp-one/") == ["ddp-one/.envkit-index.json", "ddp-one/s_0000_00000002.pth"]
    assert _uploads(s3_server, bucket) == []
    verified = _envkit("verify", f"{url}/d_0000_00000002.dcp")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _rank_main(rank: int, world: int, port: int, url: str) -> None:
    """One rank: identical weights (the data from a generator both ranks seed alike), a rank-local global RNG."""
    import torch.distributed as dist

    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    data = torch.Generator().manual_seed(1)
    model, opt = _make(0)
    with envkit.CheckpointManager(url, project="d", sharded=True, keep_last=1) as mgr:
        for step in (1, 2):
            _train(model, opt, 1, data)
            torch.manual_seed(100 + rank)
            path = mgr.save(epoch=0, step=step, model=model, optimizer=opt)
    draw = torch.rand(3)  # what this rank's RNG gives next
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), data.get_state()
    _train(model, opt, 1, data)
    fresh, fresh_opt = _make(9)
    torch.manual_seed(999)
    with envkit.CheckpointManager(url, project="d", sharded=True) as mgr:
        info = mgr.resume(model=fresh, optimizer=fresh_opt)
    same_rng = torch.equal(torch.rand(3), draw)
    same_model, same_opt = _same(fresh.state_dict(), saved[0]), _same(fresh_opt.state_dict(), saved[1])
    data.set_state(saved[2])
    _train(fresh, fresh_opt, 1, data)
    trained = _same(fresh.state_dict(), model.state_dict()) and _same(fresh_opt.state_dict(), opt.state_dict())
    single = _single_file_phase(rank, f"{url}-one")
    print(json.dumps({"rank": rank, "path": str(path), "step": info.step if info else None, "model": same_model,
                      "optimizer": same_opt, "rng": same_rng, "trained": trained, "single": single}), flush=True)


def _single_file_phase(rank: int, url: str) -> dict[str, object]:
    """One file per checkpoint from two ranks: rank 0 uploads (every rank's RNG in it), both learn the outcome, both resume."""
    model, opt = _make(0)
    with envkit.CheckpointManager(url, project="s", keep_last=1) as mgr:
        for step in (1, 2):
            _train(model, opt, 1, torch.Generator().manual_seed(step))
            torch.manual_seed(200 + rank)
            path = mgr.save(epoch=0, step=step, model=model, optimizer=opt)
    draw = torch.rand(3)
    fresh, fresh_opt = _make(9)
    with envkit.CheckpointManager(url, project="s") as mgr:
        info = mgr.resume(model=fresh, optimizer=fresh_opt)
    return {"path": str(path), "step": info.step if info else None, "rng": torch.equal(torch.rand(3), draw),
            "model": _same(fresh.state_dict(), model.state_dict()), "optimizer": _same(fresh_opt.state_dict(), opt.state_dict())}


if __name__ == "__main__" and sys.argv[1:2] == ["rank"]:
    _rank_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    end_process(0)
