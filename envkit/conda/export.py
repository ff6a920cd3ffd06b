"""An installed environment as an environment.yml without `prefix:`, installable elsewhere."""

from __future__ import annotations

from pathlib import Path

from envkit.conda.prefixes import (
    NAME_DISALLOWED_CHARS,
    active_prefix,
    env_name_problem,
    env_vars,
    installed_packages,
    pip_dists,
    read_envkit_meta,
    require_env,
    resolve_prefix,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def export_environment(
    name: str | None,
    prefix: Path | None,
    *,
    output: Path | None = None,
    no_builds: bool = False,
    from_history: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> str:
    """``envkit export``: the environment.yml of -n NAME or -p PREFIX (neither: the active one,
    as `conda env export` does), written atomically to ``output`` when given; the text is returned."""
    if name is None and prefix is None:
        prefix = active_prefix("export")
        progress(f"exporting the active environment {prefix} ($CONDA_PREFIX); pass -n NAME or -p PREFIX for another")
    text = export_spec(resolve_prefix(name, prefix), no_builds=no_builds, from_history=from_history)
    if output is not None:
        from envkit.atomic import atomic_write

        atomic_write(output, text, what="-o")
    return text


def export_spec(prefix: Path, *, no_builds: bool = False, from_history: bool = False) -> str:
    import yaml

    require_env(prefix)
    meta = read_envkit_meta(prefix)
    packages = installed_packages(prefix)
    spec = meta.get("spec") or {}
    channels = list(spec.get("channels") or [])
    if not channels:
        channels = sorted({p.channel.rstrip("/") for p in packages if p.channel})
    pip: list[str] = []
    if from_history:
        deps = list(spec.get("dependencies") or [])
        if not deps:
            requested = [s for p in packages for s in p.requested_specs] or _history_specs(prefix)
            deps = sorted(dict.fromkeys(requested))
        pip = list(spec.get("pip") or [])
    else:
        deps = [f"{p.name}={p.version}" if no_builds else f"{p.name}={p.version}={p.build}" for p in sorted(packages, key=lambda p: p.name)]
        pip = [f"{n}=={v}" for n, v in sorted(pip_dists(prefix).items())]
    doc: dict[str, object] = {}
    name = _portable_name(str(meta.get("name") or prefix.name))
    if name is not None:
        doc["name"] = name
    doc.update(channels=channels, dependencies=deps + ([{"pip": pip}] if pip else []))
    variables = env_vars(prefix)
    if variables:
        doc["variables"] = variables  # as `conda env export` does
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _portable_name(name: str) -> str | None:
    """The folder's name as a `name:` conda accepts ('my env' -> 'my-env'); None where none fits (`base`)."""
    name = "".join("-" if c in NAME_DISALLOWED_CHARS or not c.isprintable() else c for c in name).strip("-")
    return None if env_name_problem(name) else name


def _history_specs(prefix: Path) -> list[str]:
    """`# update specs: [...]` lines of conda-meta/history (what conda users asked for)."""
    import ast

    specs: list[str] = []
    try:
        text = (prefix / "conda-meta" / "history").read_text(errors="replace")
    except OSError:
        return specs
    for line in text.splitlines():
        if line.startswith(("# update specs:", "# install specs:")):
            try:
                value = ast.literal_eval(line.split(":", 1)[1].strip())
            except (ValueError, SyntaxError):
                continue
            specs.extend(str(s) for s in value if isinstance(s, str))
    return specs
