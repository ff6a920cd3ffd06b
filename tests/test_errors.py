"""The one exception tree: every error envkit raises on purpose is an EnvkitError, defined in envkit.errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import envkit
from envkit import errors


def envkit_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(envkit.__path__, "envkit.")]
    return [n for n in names if not n.endswith("__main__")]


def test_every_exception_class_is_defined_in_envkit_errors() -> None:
    outside = []
    for name in envkit_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name and name != "envkit.errors":
                outside.append(f"{name}.{attr}")
    assert outside == []


def test_every_envkit_error_has_a_documented_exit_code() -> None:
    classes = [obj for obj in vars(errors).values() if inspect.isclass(obj) and issubclass(obj, errors.EnvkitError)]
    assert classes and all(c.exit_code in (errors.EXIT_REFUSED, errors.EXIT_BAD_INPUT) for c in classes)


def test_requeue_failed_is_a_refusal_importable_where_it_was() -> None:
    from envkit.checkpoint.slurm import RequeueFailed

    assert RequeueFailed is errors.RequeueFailed
    assert issubclass(RequeueFailed, errors.CheckFailed) and RequeueFailed("x").exit_code == errors.EXIT_REFUSED
