"""A small conda MatchSpec grammar: split a dependency line into its parts, or say why it is invalid.

It follows conda's own parser (conda.models.match_spec) for the forms environment files use:

    numpy                     name only
    numpy=1.26                version (``=1.26`` means 1.26.*)
    numpy==1.26.4             exact version
    numpy>=1.21,<2            constraints joined by ``,`` (and) and ``|`` (or)
    numpy 1.26.*              version after a space
    pytorch=2.0.1=*cuda*      version and build string
    numpy 1.26.4 py311_0      version and build after spaces
    pytorch::pytorch=2.0.1    channel (a name or a URL) before ``::``
    pytorch[version='>=2', build=*cuda*]   bracketed fields, values quoted when they hold a comma
    https://host/linux-64/pkg-1.0-0.conda  a package file's URL or path

Invalid is what conda would reject or silently misread: an empty spec, no name, an operator
typo such as ``=>``, an operator without a version, a bad character in a version or build,
an unknown bracket field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPERATORS = ("==", "!=", "<=", ">=", "~=", "=", "<", ">")
BRACKET_FIELDS = frozenset(
    {"name", "version", "build", "build_number", "channel", "subdir", "url", "fn",
     "md5", "sha256", "license", "license_family", "features", "track_features"}
)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_CHANNEL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_VERSION = re.compile(r"[0-9A-Za-z_.+!*-]+")
_BUILD = re.compile(r"[0-9A-Za-z_.+!*-]+")
_BUILD_NUMBER = re.compile(r"(==|!=|<=|>=|<|>|=)?\d+")
_PACKAGE_FILE = re.compile(r".*[/\\]([^/\\]+?)-[^-/\\]+-[^-/\\]+\.(?:tar\.bz2|conda)")
_OPERATOR = re.compile("(" + "|".join(re.escape(op) for op in OPERATORS) + ")?(.*)")
# `version=build` inside one token: the version ends in a non-operator character before the `=`.
_VERSION_EQ_BUILD = re.compile(r"(.*[^=<>!~,|])=([^=<>!~,|]+)")
_BRACKET_FIELD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*(\"[^\"]*\"|'[^']*'|[^,\"']*?)\s*(,|$)")
_TYPOS = {"=>": ">=", "=<": "<=", "=!": "!=", "<>": "!="}


class InvalidMatchSpec(ValueError):
    """The reason a dependency line is not a valid conda package spec, with the fix."""


@dataclass(frozen=True)
class MatchSpec:
    name: str
    version: str | None = None
    """The version expression without spaces, e.g. ``=2.0.1``, ``>=1.21,<2``, ``1.26.*``."""
    build: str | None = None
    channel: str | None = None


def parse_match_spec(text: str) -> MatchSpec:
    """Split a conda dependency line into name, version, build and channel; InvalidMatchSpec if it is not one."""
    spec = text.strip()
    if not spec:
        raise InvalidMatchSpec("it is empty; write a package name")
    package_file = _PACKAGE_FILE.fullmatch(spec)
    if package_file:
        return MatchSpec(name=package_file.group(1), channel=None)
    fields: dict[str, str] = {}
    if "[" in spec or "]" in spec:
        m = re.fullmatch(r"([^\[\]]*)\[([^\[\]]*)\]", spec)
        if not m:
            raise InvalidMatchSpec("brackets must close and come last, as in name[version='>=1.0']")
        spec, fields = m.group(1).strip(), _bracket_fields(m.group(2))
    channel = None
    if "::" in spec:
        channel, spec = spec.rsplit("::", 1)
        if not _CHANNEL.fullmatch(channel):
            raise InvalidMatchSpec(f"{channel!r} before `::` is not a channel name or URL")
    m = re.fullmatch(r"([^\s=<>!~]*)(.*)", spec, re.S)
    name, tail = m.group(1), m.group(2).strip()  # type: ignore[union-attr]
    if not name:
        raise InvalidMatchSpec("no package name before the version; write name>=1.0")
    if not _NAME.fullmatch(name):
        raise InvalidMatchSpec(f"{name!r} is not a package name (letters, digits, '-', '_', '.')")
    version, build = _version_and_build(tail) if tail else (None, None)
    version = fields.get("version", version)
    build = fields.get("build", build)
    if version is not None:
        check_version(version)
    if build is not None and not _BUILD.fullmatch(build):
        raise InvalidMatchSpec(f"{build!r} is not a build string (letters, digits, '_', '.', '*')")
    return MatchSpec(name=name, version=version, build=build, channel=fields.get("channel", channel))


def _bracket_fields(inside: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(inside):
        m = _BRACKET_FIELD.match(inside, pos)
        if not m or m.end() == pos:
            raise InvalidMatchSpec(
                f"cannot read [{inside}]; write key=value pairs separated by commas, quoting values "
                "that hold a comma: [version='>=1,<2', build=*cuda*]"
            )
        key, value = m.group(1), m.group(2).strip("'\"")
        if key not in BRACKET_FIELDS:
            raise InvalidMatchSpec(f"unknown field {key!r} in brackets; use one of {', '.join(sorted(BRACKET_FIELDS))}")
        if not value:
            raise InvalidMatchSpec(f"the bracket field {key!r} has no value")
        if key == "build_number" and not _BUILD_NUMBER.fullmatch(value):
            raise InvalidMatchSpec(f"build_number={value!r} is not a number (optionally after >=, <, ...)")
        fields[key] = value
        pos = m.end()
    return fields


def _version_and_build(tail: str) -> tuple[str, str | None]:
    tail = re.sub(r"\s*([,|])\s*", r"\1", tail)
    tail = re.sub(r"(==|!=|<=|>=|~=|<|>)\s+", r"\1", tail)
    parts = tail.split()
    if len(parts) > 2:
        raise InvalidMatchSpec("too many space-separated parts; write name=version=build")
    if len(parts) == 2:
        return parts[0], parts[1].removeprefix("=")
    m = _VERSION_EQ_BUILD.fullmatch(parts[0])
    return (m.group(1), m.group(2)) if m else (parts[0], None)


def version_clauses(version: str) -> list[list[tuple[str, str]]]:
    """``>=1,<2|3.*`` -> [[('>=', '1'), ('<', '2')], [('', '3.*')]]: alternatives of (operator, version) pairs."""
    flat = version.replace("(", "").replace(")", "")
    clauses = []
    for alternative in flat.split("|"):
        atoms = []
        for atom in alternative.split(","):
            m = _OPERATOR.fullmatch(atom)
            atoms.append((m.group(1) or "", m.group(2)))  # type: ignore[union-attr]
        clauses.append(atoms)
    return clauses


def check_version(version: str) -> None:
    """Raise InvalidMatchSpec when a version expression is not one conda can read."""
    if version.count("(") != version.count(")"):
        raise InvalidMatchSpec(f"unbalanced parentheses in {version!r}")
    for alternative in version_clauses(version):
        for op, value in alternative:
            atom = op + value
            if not atom:
                raise InvalidMatchSpec(f"an empty constraint in {version!r} (a stray ',' or '|')")
            if not value:
                raise InvalidMatchSpec(f"`{op}` is not followed by a version; write {op}1.0 with no space, or drop it")
            if value[0] in "=<>!~":
                typo = op + value[0]
                hint = f"; did you mean `{_TYPOS[typo]}`?" if typo in _TYPOS else ""
                raise InvalidMatchSpec(f"`{typo}` in {atom!r} is not an operator (use ==, !=, <=, >=, ~=, =, <, >){hint}")
            if value.endswith("=") and _VERSION.fullmatch(value[:-1]):
                raise InvalidMatchSpec(f"{atom!r} ends with '='; write version=BUILD or drop the trailing '='")
            if not _VERSION.fullmatch(value):
                raise InvalidMatchSpec(f"{value!r} is not a version (letters, digits, '.', '_', '+', '!', '*')")
            if value.startswith(".") or ".." in value or value.endswith("."):
                raise InvalidMatchSpec(f"{value!r} has an empty version part; write e.g. 1.2 or 1.2.*")
