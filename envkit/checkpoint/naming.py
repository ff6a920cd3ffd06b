"""Checkpoint names from the filename template, and the step numbers save() accepts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from envkit.checkpoint.stamp import normalise_meta
from envkit.errors import BadInput

DEFAULT_FILENAME = "{project}_{epoch:04d}_{step:08d}.pth"


def check_template(filename: str, project: str) -> None:
    """BadInput now, before any save, for a template that cannot give a plain file name."""
    try:
        name = filename.format_map(_TemplateProbe(project=project, epoch=0, step=0))
    except (KeyError, IndexError, ValueError) as exc:
        raise BadInput(f"filename template {filename!r} is not usable ({exc}); e.g. {DEFAULT_FILENAME!r}") from None
    if "/" in name or os.sep in name or name.startswith("."):
        raise BadInput(f"filename template {filename!r} must give a plain file name, not a path or hidden file")


def checkpoint_name(filename: str, metrics: Mapping[str, Any], **fields: Any) -> str:
    return filename.format_map(_TemplateFields(metrics, **fields))


class _TemplateProbe(dict):
    """Checks a template before any metric exists: every metric field reads as 0.0."""

    def __missing__(self, key: str) -> float:
        return 0.0


class _TemplateFields(dict):
    def __init__(self, metrics: Mapping[str, Any], **fields: Any) -> None:
        super().__init__(metrics)
        self.update(fields)

    def __missing__(self, key: str) -> Any:
        raise BadInput(f"the filename template names metric {key!r}, but save() got no such metric")


def as_int(value: Any, key: str, source: str) -> int:
    """epoch and step: ints, numpy ints and 0-d integer tensors; BadInput otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = normalise_meta({key: value}, source=source)[key]
    if number is None:
        raise BadInput(f"{source}: {key} is None; it must be an int")
    return int(number)
