"""Collect the fingerprint of a live (or another, on-disk) environment.

Nothing here imports torch. Versions come from file names and metadata on disk:
``*.dist-info`` folder names, ``torch/version.py`` parsed with ``ast`` (never
executed), ``conda-meta/*.json`` names, ``/proc/driver/nvidia/version`` and, when
a driver is present, a time-boxed ``nvidia-smi`` query. When the caller has already
imported torch, what torch really loaded (cuDNN, NCCL, devices) and the determinism
flags are recorded beside them, in the undigested ``runtime`` section.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import BadInput
from envkit.fingerprint.schema import (
    EnvironmentInfo,
    Fingerprint,
    GpuDevice,
    GpuInfo,
    HostInfo,
    Package,
    PlatformInfo,
    PythonInfo,
    RuntimeInfo,
    TorchInfo,
)

NVIDIA_SMI_TIMEOUT_S = 3.0
ENVKIT_META = "envkit.json"
"""What `envkit create` writes in conda-meta/: the spec and lock an environment was made from."""

_CONDA_BUILD_CUDA = re.compile(r"cuda(\d+)\.(\d+)")
_CONDA_BUILD_CUDNN = re.compile(r"cudnn(\d+(?:\.\d+)*)")
_DRIVER_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)")
_NAME_NORMALIZE = re.compile(r"[-_.]+")


def canonical_name(name: str) -> str:
    return _NAME_NORMALIZE.sub("-", name).lower()


@dataclass(frozen=True)
class Dist:
    """A Python distribution found in a site directory."""

    name: str
    version: str
    path: Path


@dataclass(frozen=True)
class CondaRecord:
    """A package record from a prefix's conda-meta."""

    name: str
    version: str
    build: str
    path: Path


# -- discovery ----------------------------------------------------------------------


def site_dirs_of(prefix: Path | None) -> list[Path]:
    """The site-packages folders of the running interpreter, or of the environment at prefix."""
    if prefix is None:
        found = [Path(p) for p in sys.path if p and p.rstrip("/").endswith(("site-packages", "dist-packages"))]
        return [p for p in dict.fromkeys(found) if p.is_dir()]
    candidates = sorted(prefix.glob("lib/python3*/site-packages")) + [prefix / "Lib" / "site-packages"]
    return [p for p in candidates if p.is_dir()]


def scan_dists(site_dirs: Iterable[Path]) -> dict[str, Dist]:
    """Installed distributions by canonical name, from folder names alone (no METADATA read)."""
    dists: dict[str, Dist] = {}
    for site in site_dirs:
        try:
            entries = list(os.scandir(site))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.endswith(".dist-info"):
                stem = name[: -len(".dist-info")]
                dist_name, sep, version = stem.rpartition("-")
            elif name.endswith(".egg-info"):
                parts = name[: -len(".egg-info")].split("-")
                dist_name, sep, version = parts[0], "-", parts[1] if len(parts) > 1 else ""
            else:
                continue
            if not sep or not dist_name or not version:
                continue
            key = canonical_name(dist_name)
            dists.setdefault(key, Dist(key, version, Path(entry.path)))
    return dists


def scan_conda_meta(prefix: Path) -> dict[str, CondaRecord]:
    """conda packages of an environment, from ``conda-meta/<name>-<version>-<build>.json`` names."""
    records: dict[str, CondaRecord] = {}
    meta = prefix / "conda-meta"
    try:
        entries = list(os.scandir(meta))
    except OSError:
        return records
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name == ENVKIT_META:
            continue
        parts = entry.name[: -len(".json")].rsplit("-", 2)
        if len(parts) != 3:
            continue
        name, version, build = parts
        records[name] = CondaRecord(name, version, build, Path(entry.path))
    return records


# -- sections -----------------------------------------------------------------------


_IMPLEMENTATIONS = {"cpython": "CPython", "pypy": "PyPy", "graalpy": "GraalVM", "ironpython": "IronPython"}


# The platform module costs a few milliseconds to import; os answers the same on POSIX.
def _uname() -> tuple[str, str]:
    if hasattr(os, "uname"):
        u = os.uname()
        return u.sysname, u.machine
    import platform

    return platform.system(), platform.machine()


def _libc() -> str | None:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        value = None
    if value:
        return value
    import platform

    name, version = platform.libc_ver()
    return f"{name} {version}" if name else None


def _hostname() -> str | None:
    if hasattr(os, "uname"):
        return os.uname().nodename or None
    import platform

    return platform.node() or None


def python_info(prefix: Path | None, conda: dict[str, CondaRecord]) -> PythonInfo:
    if prefix is None:
        return PythonInfo(sys.version.split()[0], _IMPLEMENTATIONS.get(sys.implementation.name, sys.implementation.name))
    if "python" in conda:
        return PythonInfo(conda["python"].version, "CPython")
    cfg = prefix / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return PythonInfo(value.strip(), "CPython")
    for lib in sorted(prefix.glob("lib/python3*")):
        if (lib / "site-packages").is_dir():
            return PythonInfo(lib.name[len("python") :], None)
    return PythonInfo()


def platform_info(conda: dict[str, CondaRecord]) -> PlatformInfo:
    system, machine = _uname()
    return PlatformInfo(
        system=system or None,
        machine=machine or None,
        libc=_libc(),
        conda_subdir=conda_subdir(conda),
    )


def conda_subdir(conda: dict[str, CondaRecord] | None = None) -> str | None:
    if conda and "python" in conda:
        subdir = read_json_object(conda["python"].path).get("subdir")
        if subdir and subdir != "noarch":
            return str(subdir)
    system, machine = _uname()
    machine = machine.lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le"}.get(machine)
    if arch is None:
        return None
    if system == "Linux":
        return f"linux-{arch}"
    if system == "Darwin":
        return f"osx-{'arm64' if arch in ('arm64', 'aarch64') else '64'}"
    if system == "Windows":
        return "win-64" if arch == "64" else None
    return None


def read_torch_version_py(path: Path) -> dict[str, str | None]:
    """The literal assignments of torch/version.py, read with ast; nothing is executed."""
    import ast

    try:
        tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return {}
    values: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            if value.value is None or isinstance(value.value, str):
                values[target.id] = value.value
    return values


def cudnn_from_int(value: int) -> str:
    """torch.backends.cudnn.version() -> dotted: 8700 -> 8.7.0, 91900 -> 9.19.0."""
    if value >= 90000:
        return f"{value // 10000}.{value % 10000 // 100}.{value % 100}"
    return f"{value // 1000}.{value % 1000 // 100}.{value % 100}"


def _release(version: str, parts: int = 3) -> str:
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    if not numbers:
        return version
    return ".".join(numbers.group(0).split(".")[:parts])


def torch_info(dists: dict[str, Dist], conda: dict[str, CondaRecord], sites: Iterable[Path] = ()) -> TorchInfo:
    conda_torch = conda.get("pytorch") or conda.get("pytorch-cpu") or conda.get("pytorch-gpu")
    dist = dists.get("torch")
    if dist is None and conda_torch is None:
        return TorchInfo()

    version_py: dict[str, str | None] = {}
    folders = [dist.path.parent] if dist is not None else list(sites)
    for folder in folders:
        if (folder / "torch" / "version.py").is_file():
            version_py = read_torch_version_py(folder / "torch" / "version.py")
            break
    version = version_py.get("__version__") or (dist.version if dist else None)
    if version is None and conda_torch is not None:
        version = conda_torch.version
    cuda = version_py.get("cuda")
    build = conda_torch.build if conda_torch else None
    cudnn: str | None = None

    if build:
        if cuda is None and (m := _CONDA_BUILD_CUDA.search(build)):
            cuda = f"{m.group(1)}.{m.group(2)}"
        if m := _CONDA_BUILD_CUDNN.search(build):
            cudnn = m.group(1)
    if cudnn is None and "cudnn" in conda:
        cudnn = _release(conda["cudnn"].version)
    if cudnn is None:
        cudnn = _cudnn_from_wheels(dists, cuda)
    return TorchInfo(
        version=version,
        cuda=cuda,
        cudnn=cudnn,
        git=version_py.get("git_version"),
        build=build,
    )


def _cudnn_from_wheels(dists: dict[str, Dist], cuda: str | None) -> str | None:
    wheels = sorted(name for name in dists if name.startswith("nvidia-cudnn"))
    if not wheels:
        return None
    preferred = f"nvidia-cudnn-cu{cuda.split('.')[0]}" if cuda else None
    chosen = preferred if preferred in dists else wheels[-1]
    return _release(dists[chosen].version)


def gpu_info(proc_root: Path, dists: dict[str, Dist], conda: dict[str, CondaRecord], *, query_devices: bool) -> GpuInfo:
    driver = read_driver_version(proc_root)
    devices: tuple[GpuDevice, ...] = ()
    if driver is not None and query_devices:
        devices = query_nvidia_smi()
    nccl = None
    nccl_wheels = sorted(name for name in dists if name.startswith("nvidia-nccl"))
    if nccl_wheels:
        nccl = _release(dists[nccl_wheels[-1]].version)
    elif "nccl" in conda:
        nccl = _release(conda["nccl"].version)
    return GpuInfo(driver=driver, devices=devices, nccl=nccl)


def read_driver_version(proc_root: Path) -> str | None:
    try:
        text = (proc_root / "proc" / "driver" / "nvidia" / "version").read_text(errors="replace")
    except OSError:
        return None
    match = _DRIVER_VERSION.search(text)
    return match.group(1) if match else None


def query_nvidia_smi() -> tuple[GpuDevice, ...]:
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    if done.returncode != 0:
        return ()
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> tuple[GpuDevice, ...]:
    devices = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[0]:
            continue
        memory = re.match(r"\d+", fields[2])
        devices.append(
            GpuDevice(
                name=fields[0],
                capability=fields[1] if re.fullmatch(r"\d+\.\d+", fields[1]) else None,
                memory_mib=int(memory.group(0)) if memory else None,
            )
        )
    return tuple(devices)


_RECORD_URL = re.compile(rb'"url": *"([^"]+)"')
_RECORD_MD5 = re.compile(rb'"md5": *"([0-9a-f]{32})"')


def conda_origin(path: Path) -> tuple[str | None, str | None]:
    """The url and md5 of a conda-meta record; a regex, because a record can hold megabytes of paths."""
    try:
        data = path.read_bytes()
    except OSError:
        return None, None
    url, md5 = _RECORD_URL.search(data), _RECORD_MD5.search(data)
    return (url.group(1).decode() if url else None), (md5.group(1).decode() if md5 else None)


def packages_of(dists: dict[str, Dist], conda: dict[str, CondaRecord]) -> tuple[Package, ...]:
    items = {name: Package(name, rec.version, "conda", rec.build, *conda_origin(rec.path)) for name, rec in conda.items()}
    conda_python_names = {canonical_name(n) for n in conda}
    for name, dist in dists.items():
        if name in conda_python_names and conda:
            continue  # the conda record already names it
        items.setdefault(f"pypi:{name}", Package(name, dist.version, "pypi", None))
    return tuple(sorted(items.values()))


def environment_info(prefix: Path) -> EnvironmentInfo | None:
    meta = read_json_object(prefix / "conda-meta" / ENVKIT_META)
    if not meta:
        return None
    return EnvironmentInfo(
        name=_str_or_none(meta.get("name")),
        lock_hash=_str_or_none(meta.get("lock_hash")),
        lock_platform=_str_or_none(meta.get("platform")),
    )


def live_torch_facts() -> tuple[RuntimeInfo | None, tuple[tuple[str, object], ...] | None]:
    """What an already-imported torch loaded and was shown, and its determinism flags.

    None of it is digested (schema.py says why): the flags are settings of this process, and
    the loaded cuDNN/NCCL and torch's device list exist only once torch is imported, so putting
    them in the digested sections would give one environment two digests. torch's version and
    CUDA are not read here: ``torch/version.py`` on disk is where ``torch.__version__`` and
    ``torch.version.cuda`` come from, and ``torch_info`` reads that file with or without torch.
    Never imports torch itself.
    """
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "backends"):
        return None, None
    try:
        cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        cudnn = cudnn_from_int(int(cudnn_version)) if cudnn_version else None
        devices: tuple[GpuDevice, ...] = ()
        nccl = None
        # Only a process that already uses CUDA is asked for its devices: querying them in one
        # that does not would create a CUDA context (time, and GPU memory on device 0 of every rank).
        if torch.cuda.is_initialized():
            found = []
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                found.append(
                    GpuDevice(
                        name=props.name,
                        capability=f"{props.major}.{props.minor}",
                        memory_mib=int(props.total_memory // (1024 * 1024)),
                    )
                )
            devices = tuple(found)
            try:
                raw = torch.cuda.nccl.version()
                nccl = ".".join(map(str, raw)) if isinstance(raw, tuple) else str(raw)
            except Exception:  # noqa: BLE001 - nccl is optional in CPU and ROCm builds
                pass
        determinism = (
            ("cublas_workspace_config", os.environ.get("CUBLAS_WORKSPACE_CONFIG")),
            ("cudnn_benchmark", bool(torch.backends.cudnn.benchmark)),
            ("cudnn_deterministic", bool(torch.backends.cudnn.deterministic)),
            ("deterministic_algorithms", bool(torch.are_deterministic_algorithms_enabled())),
            ("tf32_cudnn", bool(torch.backends.cudnn.allow_tf32)),
            ("tf32_matmul", bool(torch.backends.cuda.matmul.allow_tf32)),
        )
    except Exception:  # noqa: BLE001 - a half-initialised torch must not break a save
        return None, None
    return RuntimeInfo(cudnn=cudnn, nccl=nccl, devices=devices), determinism


def _importable_torch_info() -> TorchInfo:
    """torch's version.py found the way ``import torch`` would find it, without importing it:
    for a torch on sys.path outside any site-packages folder (a source build, a PYTHONPATH)."""
    from importlib.machinery import PathFinder

    try:
        spec = PathFinder.find_spec("torch")
    except (ImportError, ValueError, OSError):
        return TorchInfo()
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        values = read_torch_version_py(Path(location) / "version.py")
        if values.get("__version__"):
            return TorchInfo(version=values["__version__"], cuda=values.get("cuda"), git=values.get("git_version"))
    return TorchInfo()


# -- entry point --------------------------------------------------------------------

WHAT_A_PREFIX_IS = (
    "pass the folder of an installed environment: a conda prefix (with conda-meta/) or a venv "
    "(with pyvenv.cfg), the sys.prefix its python prints"
)


def environment_root(prefix: str | os.PathLike[str]) -> Path:
    """``prefix`` made absolute, once it is known to be an environment: a folder with conda-meta/,
    pyvenv.cfg, or a site-packages of its own. Anything else (``/tmp``, a file, a missing path) is
    BadInput: an empty fingerprint of it would read as "an environment without torch"."""
    from envkit.errors import os_error_input

    given = Path(prefix)
    try:
        if not given.is_dir():
            what = "no such environment folder" if not os.path.lexists(given) else "not a folder"
            raise BadInput(f"{given}: {what}; {WHAT_A_PREFIX_IS}")
        root = given.resolve()
        if not ((root / "conda-meta").is_dir() or (root / "pyvenv.cfg").is_file() or site_dirs_of(root)):
            raise BadInput(f"{given}: not a Python environment (no conda-meta/, pyvenv.cfg or lib/python3*/site-packages); {WHAT_A_PREFIX_IS}")
    except OSError as exc:
        raise os_error_input(exc) from None
    except RuntimeError:  # pathlib's "Symlink loop" on Python < 3.13
        raise BadInput(f"{given}: a loop of symbolic links; {WHAT_A_PREFIX_IS}") from None
    return root



def collect(
    prefix: str | os.PathLike[str] | None = None,
    *,
    proc_root: str | os.PathLike[str] = "/",
    site_dirs: Iterable[str | os.PathLike[str]] | None = None,
    query_devices: bool = True,
    use_live_torch: bool = True,
) -> Fingerprint:
    """The fingerprint of this environment, or of the one installed at ``prefix``.

    ``prefix`` is read from its files alone (nothing there is run). ``proc_root`` and
    ``site_dirs`` exist so that tests can feed recorded machine data.
    """
    root = environment_root(prefix) if prefix is not None else None
    env_root = root if root is not None else Path(sys.prefix)
    sites = [Path(s) for s in site_dirs] if site_dirs is not None else site_dirs_of(root)
    dists = scan_dists(sites)
    conda = scan_conda_meta(env_root)

    torch = torch_info(dists, conda, sites)
    if root is None and site_dirs is None and torch.version is None:
        torch = _importable_torch_info()
    gpu = gpu_info(Path(proc_root), dists, conda, query_devices=query_devices)
    runtime, determinism = None, None
    if root is None and use_live_torch:
        runtime, determinism = live_torch_facts()

    return Fingerprint(
        python=python_info(root, conda),
        platform=platform_info(conda),
        torch=torch,
        gpu=gpu,
        determinism=determinism,
        runtime=runtime,
        packages=packages_of(dists, conda),
        environment=environment_info(env_root),
        host=HostInfo(
            hostname=_hostname(),
            collected_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            prefix=str(env_root),
        ),
    )


def read_json_object(path: Path, max_bytes: int | None = None) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object (metadata
    that an environment may or may not carry), or larger than ``max_bytes`` when given."""
    try:
        with open(path, "rb") as fh:
            if max_bytes is None:
                data = json.load(fh)
            else:
                raw = fh.read(max_bytes + 1)
                data = json.loads(raw) if len(raw) <= max_bytes else None
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
