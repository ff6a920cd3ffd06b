"""environment.yml -> EnvironmentSpec, keeping the line of every item: the one model of a spec,
which lint checks and lock and create use (``read_spec``).

The file is read with PyYAML's node API (``yaml.compose``) rather than ``safe_load`` so
that every channel, package and key keeps the line it was written on, for messages of
the form ``FILE:LINE: problem; fix``. Values are taken as written (``- 3.10`` stays the
text ``3.10``), and when a top-level key repeats, the last one wins as in ``safe_load``
and conda.

This module checks the structure only (a list where a list belongs) and raises
SpecError when the file cannot be used at all. Whether the content makes sense (package
specs, unknown keys, CUDA) is ``envkit.conda.lint``'s job. ``read_spec`` also refuses what
cannot be locked (a problem lint reports as an error, no package, no channel); the lock's
dependency lines are then parsed by conda-lock's own parser
(``EnvironmentSpec.lock_specification``), which is what its content hash is computed from.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from envkit.errors import SpecError

KNOWN_KEYS = ("name", "channels", "dependencies", "variables", "prefix", "platforms")
"""The top-level keys of conda's environment.yml, plus conda-lock's ``platforms``."""

# conda-lock downloads a PyPI->conda name mapping for `pip:` entries unless given a local one.
PIP_MAPPING = Path(__file__).with_name("pypi_mapping.json")

_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"
# What YAML makes of an unquoted value that is not text, for the message that says to quote it.
_KINDS = {"int": "a number", "float": "a number", "bool": "true/false", "timestamp": "a date", "binary": "binary data"}
# The line breaks PyYAML counts, so that mark.line indexes into the same list.
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_TRAILING_COMMENT = re.compile(r"\s+(#.*?)\s*$")


@dataclass(frozen=True)
class Item:
    """One value as written in the file: its text, its 1-based line and any `# comment` after it."""

    text: str
    line: int
    comment: str = ""


@dataclass(frozen=True)
class Problem:
    """A value conda cannot take (a number where a package belongs, an unknown installer, a pip
    line that is not a requirement). lint reports each as an error; lock and create refuse the file."""

    line: int
    code: str
    message: str


@dataclass(frozen=True)
class EnvironmentSpec:
    path: Path
    name: str | None
    channel_items: tuple[Item, ...]
    conda_items: tuple[Item, ...]
    pip_items: tuple[Item, ...]
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    prefix: str | None = None
    platforms: tuple[str, ...] = ()
    keys: tuple[Item, ...] = ()
    """Every top-level key in file order, repeats included."""
    sections: tuple[Item, ...] = ()
    """Every `installer:` mapping inside dependencies (`pip:`, and any other such as `npm:`)."""
    sha256: str = ""
    """Of the bytes that were parsed: the lock records it, so a later edit shows as stale."""
    problems: tuple[Problem, ...] = ()
    """Values conda refuses, in file order (see Problem)."""

    @property
    def channels(self) -> list[str]:
        """As written, ``nodefaults`` included."""
        return [i.text for i in self.channel_items]

    @property
    def package_channels(self) -> tuple[str, ...]:
        """The channels packages come from: ``nodefaults`` is an instruction to conda, not a channel."""
        return tuple(c for c in self.channels if c != "nodefaults")

    @property
    def conda_specs(self) -> list[str]:
        return [i.text.strip() for i in self.conda_items]

    @property
    def pip_specs(self) -> list[str]:
        return [i.text.strip() for i in self.pip_items]

    def key_line(self, key: str) -> int | None:
        """Line of the top-level key that counts (the last one), or None when it is absent."""
        lines = [k.line for k in self.keys if k.text == key]
        return lines[-1] if lines else None

    def require_usable(self) -> None:
        """SpecError (exit 2) naming the first problem's line: what lock and create do with such a file."""
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more; `envkit lint {self.path}` lists them)" if len(self.problems) > 1 else ""
            raise SpecError(f"{self.path}:{first.line}: {first.message}{more}")

    def require_lockable(self) -> None:
        """SpecError (exit 2) unless lock and create can use the spec: ``require_usable``, at least
        one conda package and one channel."""
        self.require_usable()  # what lint reports as not-text, invalid-pip, unknown-installer
        if not self.conda_specs:
            raise SpecError(f"{self.path}:{self.key_line('dependencies') or 1}: `dependencies:` lists no conda package; add the packages to install")
        if not self.package_channels:
            raise SpecError(f"{self.path}:{self.key_line('channels') or 1}: no channels; add `channels:` with at least one channel (envkit never guesses one)")

    def lock_specification(self, platforms: tuple[str, ...]) -> Any:
        """conda-lock's LockSpecification for these platforms (imports conda-lock: ~1 s)."""
        from conda_lock.src_parser.environment_yaml import parse_environment_file

        try:
            spec = parse_environment_file(self.path, list(platforms), mapping_url=str(PIP_MAPPING))
        except Exception as exc:  # noqa: BLE001 - conda-lock raises bare ValueErrors and worse
            raise SpecError(f"{self.path}: conda-lock cannot parse it ({_one_line(exc)}); fix the dependency line it names") from None
        spec.sources = [Path(self.path.name)]
        return spec

    def source_line(self, item: str) -> int | None:
        """Line where a conda spec, pip spec, channel or top-level key is written; None if absent."""
        for group in (self.conda_items, self.pip_items, self.channel_items, self.keys):
            for i in group:
                if i.text == item:
                    return i.line
        return None


def load_spec(path: str | os.PathLike[str]) -> EnvironmentSpec:
    """Read and parse an environment.yml; SpecError (exit 2) when it cannot be used."""
    path = Path(path)
    data = _read_bytes(path)
    text = _decode(path, data)
    root = _compose(path, text)
    return _Builder(path, _LINE_BREAK.split(text), hashlib.sha256(data).hexdigest()).build(root)


def read_spec(path: str | os.PathLike[str]) -> EnvironmentSpec:
    """The spec as lock and create use it: ``load_spec``, refused (SpecError) unless it can be locked."""
    spec = load_spec(path)
    spec.require_lockable()
    return spec


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text[:200]


def _read_bytes(path: Path) -> bytes:
    from envkit.inputs import read_regular_file

    return read_regular_file(path, "give the path of the environment.yml file", error=SpecError, missing=f"{path}: no such file; check the path")


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None


def _compose(path: Path, text: str) -> yaml.Node:
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        if line.strip() == "@EXPLICIT":
            raise SpecError(
                f"{path}:{number}: an @EXPLICIT package list, not an environment.yml; "
                "lint the environment.yml it was made from (`conda create --file` takes this file as it is)"
            )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        column = f" at column {mark.column + 1}" if mark else ""
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        if "\\t" in problem:
            fix = "indent with spaces, not tabs"
        elif "another document" in problem:
            fix = "keep one document per file (remove the second `---`)"
        else:
            fix = f"fix the YAML{column}"
        raise SpecError(f"{where}: not valid YAML: {problem}; {fix}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise SpecError(
            f"{path}:{line}: not valid YAML: control character U+{exc.character:04X} is not allowed; remove it"
        ) from None
    if root is None:
        raise SpecError(f"{path}:1: the file is empty; an environment.yml needs at least `dependencies:`")
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else f"the single value {root.value!r}"
        raise SpecError(
            f"{path}:{_line(root)}: the top level is {kind}, not a mapping; an environment.yml has "
            "`name:`, `channels:` and `dependencies:` keys (a requirements .txt is not an environment.yml)"
        )
    return root


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


class _Builder:
    """Walks the composed tree; raises SpecError on the first structural problem."""

    def __init__(self, path: Path, lines: list[str], sha256: str) -> None:
        self.path = path
        self.lines = lines
        self.sha256 = sha256
        self.problems: list[Problem] = []

    def fail(self, node: yaml.Node, problem: str) -> SpecError:
        return SpecError(f"{self.path}:{_line(node)}: {problem}")

    def build(self, root: yaml.MappingNode) -> EnvironmentSpec:
        keys: list[Item] = []
        values: dict[str, yaml.Node] = {}
        for key_node, value_node in root.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, "a top-level key must be a plain word such as `dependencies`; fix the key")
            keys.append(Item(key_node.value, _line(key_node)))
            values[key_node.value] = value_node  # the last repeat wins, as with safe_load
        conda, pip, sections = self.dependencies(values.get("dependencies"))
        return EnvironmentSpec(
            path=self.path,
            name=self.scalar("name", values.get("name")),
            channel_items=self.scalar_list("channels", values.get("channels")),
            conda_items=conda,
            pip_items=pip,
            variables=self.variables(values.get("variables")),
            prefix=self.scalar("prefix", values.get("prefix")),
            platforms=tuple(i.text for i in self.scalar_list("platforms", values.get("platforms"))),
            keys=tuple(keys),
            sections=sections,
            sha256=self.sha256,
            problems=tuple(sorted(self.problems, key=lambda p: p.line)),
        )

    def text(self, node: yaml.ScalarNode, where: str) -> str:
        """The value as written; a Problem when YAML reads it as something other than text."""
        if node.tag != _STR:
            kind = _KINDS.get(node.tag.rsplit(":", 1)[-1], f"a `{node.tag}` value")
            loaded = yaml.safe_load(node.value) if kind == "a number" else None  # `3.10` -> 3.1
            reads = f" ({loaded!r})" if loaded is not None and str(loaded) != node.value else ""
            self.problems.append(Problem(_line(node), "not-text", (
                f"`{node.value}` {where} is {kind}{reads} to YAML, not text, and conda refuses it there; "
                f"write the text you meant, in quotes: \"{node.value}\"")))
        return node.value

    def item(self, node: yaml.ScalarNode, where: str) -> Item:
        self.text(node, where)
        comment = ""
        start, end = node.start_mark, node.end_mark
        if start.line == end.line < len(self.lines):
            m = _TRAILING_COMMENT.match(self.lines[end.line][end.column :])
            comment = m.group(1) if m else ""
        return Item(node.value, _line(node), comment)

    def scalar(self, key: str, node: yaml.Node | None) -> str | None:
        if node is None or _is_null(node):
            return None
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"`{key}` must be a single value, not a list or mapping; write `{key}: VALUE`")
        return self.text(node, f"in `{key}:`")

    def scalar_list(self, key: str, node: yaml.Node | None) -> tuple[Item, ...]:
        if node is None or _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"`{key}` must be a list; write each entry on its own `  - ` line under `{key}:`")
        items = []
        for child in node.value:
            if not isinstance(child, yaml.ScalarNode):
                raise self.fail(child, f"each entry of `{key}` must be a single value, not a list or mapping; write one `- VALUE` per line")
            if _is_null(child):
                raise self.fail(child, f"an empty `-` entry in `{key}`; remove it or write a value")
            items.append(self.item(child, f"under `{key}:`"))
        return tuple(items)

    def dependencies(self, node: yaml.Node | None) -> tuple[tuple[Item, ...], tuple[Item, ...], tuple[Item, ...]]:
        if node is None or _is_null(node):
            return (), (), ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "`dependencies` must be a list; write each package on its own `  - ` line")
        conda: list[Item] = []
        pip: tuple[Item, ...] = ()
        sections: list[Item] = []
        for child in node.value:
            if isinstance(child, yaml.MappingNode):
                for key_node, value_node in child.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        raise self.fail(key_node, "a mapping in `dependencies` needs a plain key; write `- pip:` followed by a list")
                    key = key_node.value
                    if key == "pip":
                        sections.append(Item(key, _line(key_node)))
                        pip = self.scalar_list(key, value_node)  # conda keeps the last `pip:` section; lint reports the repeat
                        for package in pip:
                            reason = pip_line_problem(package.text)
                            if reason:
                                self.problems.append(Problem(package.line, "invalid-pip", f"pip line `{package.text}`: {reason}"))
                    elif isinstance(value_node, yaml.ScalarNode) and not _is_null(value_node):
                        # `- numpy: 1.26`: the `: ` made a mapping of what was meant as `numpy=1.26`
                        self.problems.append(Problem(_line(key_node), "invalid-spec", (
                            f"`{key}: {value_node.value}` is a YAML mapping, not a package spec (`: ` makes one); "
                            f"write `- {key}={value_node.value}`")))
                    else:
                        sections.append(Item(key, _line(key_node)))
                        self.problems.append(Problem(_line(key_node), "unknown-installer", (
                            f"`{key_node.value}:` is not an installer conda knows (only `pip:` is) and conda env create "
                            "fails on it; install those packages outside the environment file")))
            elif isinstance(child, yaml.SequenceNode):
                raise self.fail(child, "a nested list in `dependencies`; write one package per `  - ` line")
            elif _is_null(child):
                raise self.fail(child, "an empty `-` entry in `dependencies`; remove it or write a package")
            else:
                conda.append(self.item(child, "under `dependencies:`"))
        return tuple(conda), pip, tuple(sections)

    def variables(self, node: yaml.Node | None) -> Mapping[str, str]:
        if node is None or _is_null(node):
            return MappingProxyType({})
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "`variables` must be a mapping; write `  NAME: value` lines under it")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(value_node, yaml.ScalarNode):
                raise self.fail(key_node, "each entry of `variables` must be `NAME: value` with a single value; quote the value if needed")
            out[key_node.value] = "" if _is_null(value_node) else value_node.value
        return MappingProxyType(out)


# pip's requirements-file options (pip/_internal/req/req_file.py), which conda passes on as they are:
# conda writes the `pip:` lines to a requirements file and runs `pip install -r` on it.
_PIP_VALUE_OPTIONS = frozenset({
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint", "-r", "--requirement",
    "-e", "--editable", "--no-binary", "--only-binary", "--trusted-host", "--use-feature",
})
_PIP_FLAG_OPTIONS = frozenset({"--no-index", "--prefer-binary", "--require-hashes", "--pre"})
_PIP_REQUIREMENT_OPTIONS = ("--hash", "--config-settings", "--global-option")
_PIP_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_PIP_ENV_VAR = re.compile(r"\$\{[A-Z0-9_]+\}")
_CONDA_STYLE_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*=\s*([0-9][^=<>!~;\s]*)")
_PIP_ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar")


def pip_line_problem(text: str) -> str | None:
    """Why pip would refuse this `pip:` line, with the fix; None when pip takes it.

    A line is what a requirements file holds: a PEP 508 requirement (checked by
    ``packaging.requirements``, optionally followed by ``--hash=...``), a URL (``git+https://...``,
    ``https://.../x.whl``), a local path (``./pkg``, ``/wheels/x.whl``), or one of pip's
    requirements-file options (``-e PATH``, ``-r FILE``, ``--index-url URL``, ``--pre``, ...).
    ``${VAR}`` is expanded by pip first, so it stands for any text here.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    line = _PIP_ENV_VAR.sub("x", re.sub(r"(^|\s)#.*$", "", text)).strip()
    if not line:
        return "it is empty; write a package such as `requests==2.31.0`, or remove the line"
    if line.startswith("-"):
        head, _, rest = line.partition(" ")
        option, eq, inline = head.partition("=")
        if not option.startswith("--") and len(option) > 2:  # `-rfile`, as optparse reads it
            option, inline, eq = option[:2], option[2:], "="
        value = (inline if eq else rest).strip()
        if option in _PIP_FLAG_OPTIONS:
            return None if not value.strip() else f"`{option}` takes no value; write it alone on its line"
        if option in _PIP_VALUE_OPTIONS:
            return None if value.strip() else f"`{option}` needs a value, e.g. `{option} ./pkg` or `{option} URL`"
        return (f"`{option}` is not an option pip accepts in a requirements file (those are -e, -r, -c, "
                "--index-url, --extra-index-url, --find-links, --no-index, --pre, ...); fix the option or write a requirement")
    requirement, *options = re.split(r"\s+(?=--)", line)
    for option in options:
        if not option.startswith(_PIP_REQUIREMENT_OPTIONS):
            return f"`{option.split()[0]}` cannot follow a requirement; only {', '.join(_PIP_REQUIREMENT_OPTIONS)} can"
    if _PIP_URL.fullmatch(requirement) or _is_pip_path(requirement):
        return None
    conda_pin = _CONDA_STYLE_PIN.fullmatch(requirement)
    if conda_pin:
        return f"pip pins a version with `==`, not conda's `=`; write `{conda_pin.group(1)}=={conda_pin.group(2)}`"
    try:
        Requirement(requirement)
    except InvalidRequirement as exc:
        why = str(exc).splitlines()[0].rstrip(".")
        return (f"not a requirement pip can read ({why}); write NAME, NAME==VERSION or NAME>=VERSION "
                "(one package per line, no spaces inside a name), a URL, or a path starting with ./")
    return None


def _is_pip_path(text: str) -> bool:
    """pip treats a line as a local path when it has a path separator, starts with '.' or '~', or names an archive."""
    return "/" in text or "\\" in text or text.startswith((".", "~")) or text.lower().endswith(_PIP_ARCHIVES)
