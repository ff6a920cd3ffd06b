"""Checkpoint names from the filename template, and the step numbers save() accepts.

The fields a template can name: ``project``, ``epoch``, ``step``, ``timestamp`` (the save
time in UTC as ``20261201T194500Z``: sortable and safe in any file name), ``time`` (the
same instant; ``{time:%Y%m%d-%H%M%S}`` formats it with strftime codes, UTC), and the
metrics save() gets. The save time is taken once per save and is the stamp's ``saved_at``.
Names never order checkpoints: the step in the stamp does.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from envkit.checkpoint.stamp import normalise_meta
from envkit.errors import BadInput

DEFAULT_FILENAME = "{project}_{epoch:04d}_{step:08d}.pth"
FIELDS = ("project", "epoch", "step", "timestamp", "time")
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# strftime codes whose text does not depend on the locale (no %a %b %c %p %x ...) and has no "/"
TIME_CODES = frozenset("YymdHIMSfjzZGVuwUW%")
_PROBE_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)


def save_time(now: datetime | None = None) -> datetime:
    """The save time, UTC, at the millisecond the stamp's ``saved_at`` records."""
    now = now if now is not None else datetime.now(timezone.utc)
    now = now.astimezone(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def uses_time(filename: str) -> bool:
    """Whether the template names ``{timestamp}`` or ``{time}`` (ranks then agree on one save time)."""
    try:
        return any(field is not None and field.split(".")[0].split("[")[0] in ("timestamp", "time")
                   for _, field, _, _ in string.Formatter().parse(filename))
    except ValueError:
        return False


def check_template(filename: str, project: str) -> None:
    """BadInput now, before any save, for a template that cannot give a plain file name."""
    try:
        name = filename.format_map(_TemplateProbe(project=project, epoch=0, step=0, **_time_fields(_PROBE_TIME)))
    except BadInput as exc:
        raise BadInput(f"filename template {filename!r}: {exc}") from None
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise BadInput(f"filename template {filename!r} is not usable ({exc}); e.g. {DEFAULT_FILENAME!r}") from None
    if "/" in name or os.sep in name or "\0" in name or name.startswith("."):
        raise BadInput(f"filename template {filename!r} must give a plain file name, not a path or hidden file")


def checkpoint_name(filename: str, metrics: Mapping[str, Any], *, saved_at: datetime | None = None, **fields: Any) -> str:
    """The template filled in; ``saved_at`` (default now) gives ``{timestamp}`` and ``{time}``."""
    return filename.format_map(_TemplateFields(metrics, **_time_fields(save_time(saved_at)), **fields))


def _time_fields(when: datetime) -> dict[str, Any]:
    return {"timestamp": when.strftime(TIMESTAMP_FORMAT), "time": SaveTime(when)}


class SaveTime:
    """``{time}`` in a template: the save time, UTC; a format spec is a strftime format of portable codes."""

    __slots__ = ("when",)

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __format__(self, spec: str) -> str:
        if not spec:
            return self.when.strftime(TIMESTAMP_FORMAT)
        codes = _codes(spec)
        if not codes:  # e.g. {time:.1f}: a number's format; the field is the save time, never a metric
            raise BadInput(f"{{time:{spec}}} has no strftime code; {{time}} is the save time, formatted like "
                           f"{{time:%Y%m%d-%H%M%S}} (a metric named 'time' cannot be used in a template: rename it)")
        bad = [f"%{c}" for c in codes if c not in TIME_CODES]
        if bad:
            raise BadInput(f"{{time:{spec}}} uses {', '.join(sorted(set(bad)))}; use only the "
                           f"strftime codes whose text is the same in every locale: "
                           f"{' '.join('%' + c for c in sorted(TIME_CODES - {'%'}))} (and %%)")
        text = self.when.strftime(spec)
        if "/" in text or "\0" in text or os.sep in text:
            raise BadInput(f"{{time:{spec}}} gives {text!r}, which is not part of a file name; drop '/'")
        return text

    def __str__(self) -> str:
        return self.when.strftime(TIMESTAMP_FORMAT)


def _codes(spec: str) -> list[str]:
    """The strftime codes in ``spec``, left to right ("%%" is one code; a lone "%" at the end is "")."""
    codes, i = [], 0
    while i < len(spec):
        if spec[i] == "%":
            codes.append(spec[i + 1:i + 2])
            i += 2
        else:
            i += 1
    return codes


class _TemplateProbe(dict):
    """Checks a template before any metric exists: every metric field reads as 0.0."""

    def __missing__(self, key: str) -> float:
        return 0.0


class _TemplateFields(dict):
    def __init__(self, metrics: Mapping[str, Any], **fields: Any) -> None:
        super().__init__(metrics)
        self._metrics = sorted(str(k) for k in metrics)
        self.update(fields)

    def __missing__(self, key: str) -> Any:
        got = ", ".join(self._metrics) if self._metrics else "none"
        raise BadInput(f"the filename template names metric {key!r}, but save() got no such metric (it got: {got}); "
                       f"the fields are {', '.join(FIELDS)}; pass metrics={{{key!r}: ...}} or fix the template")


def as_int(value: Any, key: str, source: str) -> int:
    """epoch and step: ints, numpy ints and 0-d integer tensors; BadInput otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = normalise_meta({key: value}, source=source)[key]
    if number is None:
        raise BadInput(f"{source}: {key} is None; it must be an int")
    return int(number)
