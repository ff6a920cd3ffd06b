"""Metrics and meta: 0-d tensors and numpy scalars become numbers, anything else is a clear error
raised before anything is written (issue 10, item 8)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

import envkit

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.filterwarnings("ignore::envkit.EphemeralDirectoryWarning")


def strict_json(data: bytes) -> Any:
    """JSON as every parser reads it: NaN and Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(data, parse_constant=refuse)


def stamp_json(path: Path) -> dict[str, Any]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/extra/envkit.json"))
        return strict_json(zf.read(name))


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_manager_takes_tensor_and_numpy_metrics(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    loss = model(torch.ones(1, 2)).sum() ** 2
    metrics = {
        "val_loss": loss.detach(),  # the example
        "grad_loss": loss,  # requires_grad: item() still gives the number
        "acc": np.float32(0.75),
        "f1": np.float64(0.5),
        "seen": np.int64(128),
        "top5": np.array(0.875),  # a 0-d array
        "count": torch.tensor(7),
    }
    with envkit.CheckpointManager(tmp_path, project="p", filename="{project}_{step}_{val_loss:.4f}.pth", monitor="val_loss") as mgr:
        path = mgr.save(epoch=np.int64(1), step=torch.tensor(10), metrics=metrics, model=model)
        expected = {"val_loss": loss.item(), "grad_loss": loss.item(), "acc": 0.75, "f1": 0.5, "seen": 128, "top5": 0.875, "count": 7}
        assert path is not None and path.name == f"p_10_{loss.item():.4f}.pth"
        stamp = stamp_json(path)
        assert stamp["meta"]["metrics"] == expected and stamp["meta"]["epoch"] == 1 and stamp["meta"]["step"] == 10
        assert all(type(v) in (int, float) for v in envkit.read_stamp(path).stamp.metrics.values())
        assert mgr.best().path == path and mgr.latest().metrics == expected
        info = mgr.resume(model=torch.nn.Linear(2, 1))
        assert info.metrics == expected and (info.epoch, info.step) == (1, 10)


def test_save_takes_numpy_and_tensor_meta(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    envkit.save(
        {"w": torch.ones(2)},
        path,
        meta={
            "metrics": {"loss": np.float32(1.5), "acc": torch.tensor(0.25)},
            "epoch": np.int32(3),
            "step": torch.tensor(30),
            "config": {"lr": np.float64(0.001), "sizes": [np.int64(1), 2], "name": "run-1"},
        },
    )
    meta = stamp_json(path)["meta"]
    assert meta["metrics"] == {"loss": 1.5, "acc": 0.25} and (meta["epoch"], meta["step"]) == (3, 30)
    assert meta["config"] == {"lr": 0.001, "sizes": [1, 2], "name": "run-1"}


BAD_METRICS = {
    "1-d tensor of one": lambda: torch.tensor([1.5]),
    "2-d tensor": lambda: torch.ones(2, 2),
    "1-d array": lambda: np.array([0.5]),
    "string": lambda: "0.5",
    "list": lambda: [0.5],
    "dict": lambda: {"a": 0.5},
    "None": lambda: None,
    "bool": lambda: True,
    "complex": lambda: 1 + 2j,
    "object": lambda: object(),
}


@pytest.mark.parametrize("kind", BAD_METRICS)
def test_a_metric_that_is_not_a_number_fails_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    value = BAD_METRICS[kind]()
    with envkit.CheckpointManager(tmp_path / "run", project="p", monitor="val_loss") as mgr:
        before = listing(tmp_path / "run")
        with pytest.raises(envkit.BadInput, match=r"metric 'val_loss' is .*it must be a number"):
            mgr.save(epoch=0, step=1, metrics={"val_loss": value, "ok": 1.0}, model=torch.nn.Linear(1, 1))
        assert listing(tmp_path / "run") == before
    with pytest.raises(envkit.BadInput, match=r"c\.pth: metric 'val_loss' is .*it must be a number"):
        envkit.save({"w": torch.ones(1)}, tmp_path / "c.pth", meta={"metrics": {"val_loss": value}})
    assert listing(tmp_path) == ["run"]


def test_a_one_element_tensor_says_how_to_get_the_number(tmp_path: Path) -> None:
    with pytest.raises(envkit.BadInput, match=r"torch\.Tensor of shape \(1,\).*\.item\(\)"):
        envkit.save({}, tmp_path / "c.pth", meta={"metrics": {"loss": torch.tensor([1.5])}})


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"epoch": 1.5}, "meta 'epoch' is a float; it must be an int"),
        ({"step": "10"}, "meta 'step' is a str; it must be an int"),
        ({"step": True}, "meta 'step' is a bool; it must be an int"),
        ({"step": torch.tensor([3])}, r"meta 'step' is a torch.Tensor of shape \(1,\); it must be an int"),
        ({"metrics": [1.0]}, "metrics must be a dict"),
        ({"metrics": {1: 1.0}}, "metric name 1 is not a string"),
        ({"config": {"model": object()}}, r"meta 'config'\['model'\] is an object"),
        ({"config": {1: "x"}}, "has the key 1, which is not a string"),
        ({"tags": [{"a", "b"}]}, r"meta 'tags'\[0\] is a set"),
    ],
)
def test_bad_meta_names_the_key_and_writes_nothing(tmp_path: Path, meta: dict[str, Any], message: str) -> None:
    with pytest.raises(envkit.BadInput, match=message):
        envkit.save({"w": torch.ones(1)}, tmp_path / "c.pth", meta=meta)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("epoch, step", [(1.0, 1), (0, "3"), (None, 1), (0, torch.ones(2))])
def test_manager_epoch_and_step_must_be_ints(tmp_path: Path, epoch: Any, step: Any) -> None:
    with envkit.CheckpointManager(tmp_path, project="p") as mgr:
        before = listing(tmp_path)
        with pytest.raises(envkit.BadInput, match="must be an int"):
            mgr.save(epoch=epoch, step=step, force=True)
        assert listing(tmp_path) == before


def test_nan_and_inf_are_null_in_the_stamp_and_never_the_best(tmp_path: Path) -> None:
    """JSON has no NaN or inf: the stamp stays standard JSON, and keep-best ranks only real numbers."""
    with envkit.CheckpointManager(tmp_path, project="p", keep_last=1, keep_best=1, monitor="acc", mode="max",
                                  filename="{project}_{step}_{acc}.pth") as mgr:
        good = mgr.save(epoch=0, step=1, metrics={"acc": np.float32(0.5)})
        inf = mgr.save(epoch=0, step=2, metrics={"acc": float("inf")})
        assert stamp_json(inf)["meta"]["metrics"] == {"acc": None}
        assert mgr.best().path == good  # inf is not the best accuracy
        nan = mgr.save(epoch=0, step=3, metrics={"acc": torch.tensor(float("nan"))})
        assert (inf.name, nan.name) == ("p_2_inf.pth", "p_3_nan.pth")  # the template formats the number it got
        assert stamp_json(nan)["meta"]["metrics"] == {"acc": None}
        assert mgr.best().path == good  # nor is NaN
        assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["p_1_0.5.pth", "p_3_nan.pth"]  # newest + best
        info = mgr.resume()
        assert info.path == nan and info.metrics == {"acc": None}
    envkit.save({}, tmp_path / "plain.pth", meta={"metrics": {"loss": -math.inf}, "lr": float("nan")})
    meta = stamp_json(tmp_path / "plain.pth")["meta"]
    assert meta["metrics"] == {"loss": None} and meta["lr"] is None


def test_normalising_meta_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom envkit.checkpoint.stamp import normalise_meta\n"
        "normalise_meta({'epoch': 1, 'metrics': {'a': 1.0}, 'x': ['y']}, source='s')\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"], done.stderr
