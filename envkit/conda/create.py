"""Create an environment exactly from a fresh lock (or from a spec, locked on the fly).

Nothing half-made is ever left under the target name: the embedded engine installs
into a hidden sibling folder with the final prefix patched into the files, and the
folder is renamed into place at the end. The ``pip:`` part then runs with the new
environment's own python; if it fails, the environment is removed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envkit.conda.channels import ResolvedChannel
from envkit.conda.engines import Engine, explicit_install_command, pick_engine
from envkit.conda.explicit import render_explicit
from envkit.conda.lock import DEFAULT_LOCKFILE, LockDocument, LockedPackage, check_lock, default_cache_dir, make_lock, read_lock
from envkit.conda.pip_lock import PipPackage, requirements_text
from envkit.conda.platforms import check_cuda_version, current_platform
from envkit.conda.prefixes import ENVKIT_META, KEPT_LOCK, STATE_FILE, env_dir_for, pip_dists, resolve_prefix
from envkit.conda.spec import EnvironmentSpec, read_spec
from envkit.errors import BadInput, InstallError, StaleLock

Progress = Callable[[str], None]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from envkit.conda.condarc import CondaConfig


@dataclass(frozen=True)
class CreatePlan:
    prefix: Path
    platform: str
    engine: Engine
    lock: LockDocument
    spec: EnvironmentSpec | None
    packages: tuple[LockedPackage, ...]
    pip: tuple[PipPackage, ...]
    """The lock's pip set for this platform: installed exactly (hashes, no dependency resolution)."""
    kept_lock: Path | None = None
    """Where the lock solved from the spec goes (None when installing an existing lock)."""
    channels: tuple[ResolvedChannel, ...] = ()
    """The channel URLs a solve on the fly used, each with the setting that gave it (none from a lock)."""
    prefix_via: str | None = None
    """The setting that put -n NAME where it is (conda's envs_dirs, $ENVKIT_ENVS_DIR); None: -p or the default."""

    @property
    def lockfile(self) -> Path:
        """The lock the environment records: the kept one, else the one it was installed from."""
        return self.kept_lock or self.lock.path.resolve()


def plan_create(
    spec_path: Path | None,
    lockfile: Path | None,
    *,
    name: str | None = None,
    prefix: Path | None = None,
    engine: str = "auto",
    with_cuda: str | None = None,
    mirrors: tuple[tuple[str, str], ...] = (),
    cache_dir: Path | None = None,
    scratch: Path | None = None,
    condarc: CondaConfig | None = None,
    mirrors_from: Path | None = None,
) -> CreatePlan:
    check_cuda_version(with_cuda)  # a bad --with-cuda is exit 2 whether or not a lock is used
    platform = current_platform()
    chosen_engine = pick_engine(engine)  # before any solving: a missing executable is a usage error
    spec = read_spec(spec_path) if spec_path is not None else None
    lock_path = lockfile
    if lock_path is None and spec is not None and (spec.path.parent / DEFAULT_LOCKFILE).is_file():
        lock_path = spec.path.parent / DEFAULT_LOCKFILE
    kept_lock: Path | None = None
    channels: tuple[ResolvedChannel, ...] = ()
    if lock_path is not None:
        lock = read_lock(lock_path)
        lock.require_platform(platform)
        from envkit.conda.solver import check_cuda_plan

        check_cuda_plan(((p.name, p.version, p.build) for p in lock.packages_for(platform)), platform, lock.with_cuda, source=lock.path, locked=True)
        if spec is None:
            sources = [p for p in lock.spec_paths() if p.is_file()]
            spec = read_spec(sources[0]) if sources else None
        if spec is not None:
            verdict = check_lock((spec.path,), lock.path, platforms=(platform,), with_cuda=with_cuda)
            if not verdict.fresh:
                raise StaleLock(f"{lock.path}: stale for {spec.path} ({'; '.join(verdict.changes)}); run `envkit lock` first")
        target = _free_target(name, prefix, spec.name if spec else None)
    elif spec is not None:
        if scratch is None:
            raise ValueError("plan_create needs a scratch folder to solve a spec without a lock")
        target = _free_target(name, prefix, spec.name)  # before solving, which takes the longest
        # the lock solved here is kept in the environment, so doctor finds it later; its
        # `sources` are written relative to where it will live, not to the scratch folder
        kept_lock = target / "conda-meta" / KEPT_LOCK
        made = make_lock((spec.path,), scratch / KEPT_LOCK, platforms=(platform,), with_cuda=with_cuda, mirrors=mirrors, cache_dir=cache_dir,
                         sources_from=kept_lock.parent, condarc=condarc, mirrors_from=mirrors_from)
        lock = read_lock(made.path)
        channels = made.channels
    else:
        raise BadInput("nothing to create from; pass an environment file or --lockfile")
    chosen = name or (spec.name if spec is not None else None)
    return CreatePlan(
        prefix=target,
        platform=platform,
        engine=chosen_engine,
        lock=lock,
        spec=spec,
        packages=lock.packages_for(platform),
        pip=lock.pip_for(platform),
        kept_lock=kept_lock,
        channels=channels,
        prefix_via=env_dir_for(chosen)[1] if prefix is None and chosen else None,
    )


def create_environment(
    spec_path: Path | None,
    lockfile: Path | None,
    *,
    name: str | None = None,
    prefix: Path | None = None,
    engine: str = "auto",
    with_cuda: str | None = None,
    mirrors: tuple[tuple[str, str], ...] = (),
    dry_run: bool = False,
    progress: Progress = lambda _: None,
    condarc: CondaConfig | None = None,
    mirrors_from: Path | None = None,
) -> CreatePlan:
    """``envkit create``: plan the environment (from ``lockfile``, or ``spec_path`` locked on the
    fly; neither: ./environment.yml when there is one) and, unless ``dry_run``, create it at the
    plan's prefix. The plan is returned either way; a lock solved on the fly is solved in a
    temporary folder that is removed at the end."""
    if spec_path is None and lockfile is None and Path("environment.yml").is_file():
        spec_path = Path("environment.yml")
    with tempfile.TemporaryDirectory(prefix="envkit-create-") as scratch:
        plan = plan_create(spec_path, lockfile, name=name, prefix=prefix, engine=engine, with_cuda=with_cuda, mirrors=mirrors, scratch=Path(scratch),
                           condarc=condarc, mirrors_from=mirrors_from)
        if not dry_run:
            create(plan, cache_dir=default_cache_dir(), progress=progress)
    return plan


def _free_target(name: str | None, prefix: Path | None, default_name: str | None) -> Path:
    target = resolve_prefix(name, prefix, default_name)
    if target.exists() and any(target.iterdir()):
        raise BadInput(f"{target}: already exists; remove it, or choose another -n/-p")
    return target


def create(plan: CreatePlan, *, cache_dir: Path, progress: Progress = lambda _: None) -> Path:
    target = plan.prefix
    made = _make_parents(target)
    try:
        _create_in(plan, cache_dir=cache_dir, progress=progress)
    except BaseException:
        for folder in made:  # the envs/ folders made for it, innermost first, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    progress(f"created {target}")
    return target


def _make_parents(target: Path) -> list[Path]:
    missing = [p for p in target.parents if not p.is_dir()]
    target.parent.mkdir(parents=True, exist_ok=True)
    return missing  # innermost first


def _create_in(plan: CreatePlan, *, cache_dir: Path, progress: Progress) -> None:
    target = plan.prefix
    if plan.engine.embedded:
        progress(f"installing {len(plan.packages)} conda packages with rattler")
        _create_staged(plan, cache_dir)
    else:
        progress(f"installing {len(plan.packages)} conda packages with {plan.engine.name} ({plan.engine.executable})")
        _create_external(plan)
    if plan.pip:
        try:
            progress(f"installing {len(plan.pip)} locked pip packages with the environment's pip")
            install_pip(target, plan.pip)
            _write_meta(plan, target, pip=tuple(sorted(pip_dists(target).items())))
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise


def _create_staged(plan: CreatePlan, cache_dir: Path) -> None:
    # rattler patches the final prefix into the files (alternative_target_prefix), so it
    # can install into a hidden sibling that is renamed into place only when complete
    target = plan.prefix
    staging = target.with_name(f".{target.name}.envkit-tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _install_rattler(plan, staging, cache_dir)
        _keep_lock(plan, staging)
        _write_variables(plan, staging)
        _write_meta(plan, staging, pip=())
        if target.exists():
            target.rmdir()  # an empty folder left by the user; anything more was refused in plan
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _create_external(plan: CreatePlan) -> None:
    # conda, mamba and micromamba write the prefix into files and into their own list of
    # environments, so they must install at the final path; a failure removes it again
    target = plan.prefix
    was_empty_dir = target.is_dir()
    if was_empty_dir:
        target.rmdir()  # conda refuses an existing folder that is not an environment
    try:
        _install_external(plan, target)
        _keep_lock(plan, target)
        _write_variables(plan, target)
        _write_meta(plan, target, pip=())
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if was_empty_dir:
            target.mkdir()
        raise


def _install_rattler(plan: CreatePlan, staging: Path, cache_dir: Path) -> None:
    from dataclasses import asdict

    from envkit.conda.solver import install

    failed = install([asdict(p) for p in plan.packages], staging, prefix=plan.prefix, cache_dir=cache_dir / "pkgs")
    if failed is not None:
        raise InstallError(f"{plan.lock.path}: installing into {plan.prefix} failed ({failed}); nothing was created")
    (staging / "CACHEDIR.TAG").unlink(missing_ok=True)


def _install_external(plan: CreatePlan, prefix: Path) -> None:
    text = render_explicit(plan.platform, ((p.url, p.md5, p.sha256) for p in plan.packages))
    offline = all(p.url.startswith("file:") for p in plan.packages)
    with tempfile.TemporaryDirectory(prefix="envkit-explicit-") as folder:
        explicit = Path(folder) / "explicit.txt"
        explicit.write_text(text)
        cmd = explicit_install_command(plan.engine, prefix, explicit, offline=offline)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise InstallError(f"{plan.engine.executable}: cannot run ({exc.strerror}); fix it, or use --engine rattler (built in)") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise InstallError(f"{plan.engine.name} failed to create {plan.prefix} ({tail}); nothing was created")
    if not (prefix / "conda-meta").is_dir():
        raise InstallError(f"{plan.engine.name} exited 0 but made no environment at {plan.prefix} (no conda-meta/); nothing was created")


def python_of(prefix: Path) -> Path:
    for candidate in (prefix / "bin" / "python", prefix / "python.exe"):
        if candidate.exists():
            return candidate
    raise InstallError(f"{prefix}: has no python, so the `pip:` part cannot be installed; add python to the dependencies")


def install_pip(prefix: Path, packages: tuple[PipPackage, ...]) -> None:
    """Exactly these wheels, by the environment's own pip: hash-checking mode, no resolution."""
    python = python_of(prefix)
    with tempfile.TemporaryDirectory(prefix="envkit-pip-") as folder:
        requirements = Path(folder) / "requirements.txt"
        requirements.write_text(requirements_text(packages))
        cmd = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--no-deps", "--require-hashes", "--only-binary=:all:", "-r", str(requirements)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise InstallError(f"pip install into {prefix} failed ({tail}); check the pip index, or run `envkit lock` again")


def _keep_lock(plan: CreatePlan, prefix: Path) -> None:
    if plan.kept_lock is not None:
        meta = prefix / "conda-meta"
        meta.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan.lock.path, meta / KEPT_LOCK)


def _write_variables(plan: CreatePlan, prefix: Path) -> None:
    """The spec's ``variables:`` where conda keeps them (``conda env config vars``), so that
    ``conda activate`` and ``micromamba activate`` set them."""
    if plan.spec is None or not plan.spec.variables:
        return
    state_path = prefix / STATE_FILE
    try:
        state = json.loads(state_path.read_text())  # keep what an external engine wrote there
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    state["env_vars"] = {**(state.get("env_vars") or {}), **dict(sorted(plan.spec.variables.items()))}
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, ensure_ascii=False))


def _write_meta(plan: CreatePlan, prefix: Path, *, pip: tuple[tuple[str, str], ...]) -> None:
    spec = plan.spec
    doc = {
        "name": plan.prefix.name,
        "prefix": str(plan.prefix),
        "lock_hash": plan.lock.hash_for(plan.platform),
        "lockfile": str(plan.lockfile),
        "platform": plan.platform,
        "with_cuda": plan.lock.with_cuda,
        "engine": plan.engine.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": {
            "path": str(spec.path.resolve()),
            "name": spec.name,
            "channels": list(spec.package_channels),
            "dependencies": list(spec.conda_specs),
            "pip": list(spec.pip_specs),
        }
        if spec
        else None,
        "pip": [list(p) for p in pip],
    }
    meta = prefix / "conda-meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / ENVKIT_META).write_text(json.dumps(doc, indent=2) + "\n")
