"""Issue 11: each concept in one module, named for what it does, and no module importing upward.

The checks read the modules' source (every import, those inside functions too) and call the real
functions; nothing here is mocked but the spy that counts the calls of ``policy.judge``.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

import envkit
from envkit import policy
from envkit.fingerprint import collect
from envkit.policy import Policy

ROOT = Path(envkit.__file__).parent
H200 = Path(__file__).parent / "data" / "gpu-h200-cuda_saved.pth"  # a real, unstamped checkpoint


def files_of(module: str) -> list[Path]:
    """The source files of a module, or of every module of a package."""
    found = importlib.util.find_spec(module)
    assert found is not None and found.origin, module
    origin = Path(found.origin)
    return sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_rank_check_and_the_collectives_do_not_import_the_checkpoint_package() -> None:
    for path in files_of("envkit.distributed"):
        upward = sorted(n for n in imported(path) if n == "envkit.checkpoint" or n.startswith("envkit.checkpoint."))
        assert upward == [], f"{path.relative_to(ROOT)} imports {upward}"


def test_distributed_is_split_into_the_collectives_and_the_rank_check() -> None:
    import envkit.distributed
    from envkit.distributed import collectives, consistency

    assert envkit.distributed.check_consistency is consistency.check_consistency  # as README documents it
    for name in ("rank", "world_size", "is_distributed", "all_max", "all_gather", "broadcast_object", "gather"):
        assert getattr(envkit.distributed, name) is getattr(collectives, name)
    assert not any(n.startswith("envkit") for n in imported(Path(collectives.__file__)))  # torch.distributed only
    assert not hasattr(consistency, "all_max") and not hasattr(collectives, "check_consistency")


def test_check_guard_and_load_live_in_resume_check() -> None:
    from envkit.checkpoint import resume_check

    for name in ("check", "guard", "load", "CheckReport"):
        assert getattr(importlib.import_module("envkit.checkpoint"), name) is getattr(resume_check, name)
    assert envkit.check is resume_check.check and envkit.guard is resume_check.guard and envkit.load is resume_check.load


def test_the_policy_is_resolved_in_config() -> None:
    from envkit.config import resolve_policy

    given = Policy.of("strict")
    assert resolve_policy(given) is given
    resume_check = importlib.import_module("envkit.checkpoint.resume_check")
    consistency = importlib.import_module("envkit.distributed.consistency")
    assert resume_check.resolve_policy is resolve_policy and consistency.resolve_policy is resolve_policy


def _definitions(name: str) -> list[str]:
    """Where envkit defines ``name`` at module level (a function or an assignment)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                found.append(str(path.relative_to(ROOT)))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found.append(str(path.relative_to(ROOT)))
    return found


def test_envkit_meta_and_the_json_reader_are_defined_once() -> None:
    assert _definitions("ENVKIT_META") == ["fingerprint/sources.py"]
    assert _definitions("_read_json") == []
    assert _definitions("read_json_object") == ["fingerprint/sources.py"]
    from envkit.conda import prefixes
    from envkit.fingerprint import sources

    assert prefixes.ENVKIT_META is sources.ENVKIT_META and prefixes.read_json_object is sources.read_json_object


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> list[policy.Judgement]:
    """Every Judgement the callers get, by wrapping the real ``policy.judge`` where they call it."""
    calls: list[policy.Judgement] = []
    real = policy.judge

    def spy(*args: object, **kwargs: object) -> policy.Judgement:
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    for module in ("envkit.checkpoint.resume_check", "envkit.distributed.consistency"):
        monkeypatch.setattr(f"{module}.judge", spy)
    return calls


def test_check_takes_its_rows_and_verdict_from_judge(judged: list[policy.Judgement]) -> None:
    from envkit.checkpoint.resume_check import check

    report = check(H200, policy="strict")  # unstamped: the stamp row (and the CUDA row without CUDA)
    assert len(judged) == 1 and (report.differences, report.verdict) == (judged[0].differences, judged[0].verdict)
    assert report.differences[0].field == "stamp" and report.verdict == "refuse"


def test_compare_takes_its_rows_and_verdict_from_judge(judged: list[policy.Judgement], tmp_path: Path) -> None:
    from envkit.checkpoint.resume_check import compare

    live = collect()
    older = tmp_path / "older.json"
    older.write_text(json.dumps(live.to_json() | {"python": {"version": "3.4.0", "implementation": "CPython"}}))
    report = compare(str(older), str(H200))
    assert len(judged) == 1 and (report.differences, report.verdict) == (judged[0].differences, judged[0].verdict)
    assert [(d.field, d.stored, d.live) for d in report.differences] == [("stamp", "present", None)]


def test_the_rank_check_takes_its_rows_from_judge(judged: list[policy.Judgement]) -> None:
    from dataclasses import replace

    from envkit.distributed import compare_fingerprints
    from envkit.fingerprint.schema import PythonInfo

    live = collect()
    other = replace(live, python=PythonInfo("3.4.0", "CPython"))
    ranks = compare_fingerprints([live, live, other], Policy.of("compatible"))
    assert [d.rank for d in ranks] == [2] and len(judged) == 1 and ranks[0].rows == judged[0].differences
