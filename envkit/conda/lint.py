"""Lint an environment.yml: pure checks over its EnvironmentSpec, each finding with file and line.

Errors are what makes conda fail, or silently build something other than what the file
says; warnings are what still works but will not reproduce or surprises later.

| code                   | severity | finding                                                                 |
| ---------------------- | -------- | ----------------------------------------------------------------------- |
| `file-extension`       | error    | not `.yml`/`.yaml`: `conda env create -f` and conda-lock do not read it  |
| `unknown-key`          | error    | a top-level key conda does not know (`dependecies`); its content is ignored |
| `duplicate-key`        | error    | a top-level key twice: YAML keeps the last, the first is dropped         |
| `unknown-installer`    | error    | a `npm:`-style section in dependencies; only `pip:` exists               |
| `not-text`             | error    | a value YAML reads as a number, true/false or a date (`- 5`, `name: 3.10`) where conda needs text |
| `invalid-pip`          | error    | a `pip:` line pip cannot read (`requests>>2`, `foo bar`, `numpy=1.2`, an unknown option) |
| `invalid-name`         | error    | a `name:` conda refuses: '/', ':', '#' or a space in it, or `base`/`root` |
| `duplicate-pip`        | error    | two `pip:` sections: conda keeps the last                                |
| `invalid-spec`         | error    | a dependency rattler's MatchSpec rejects, or reads otherwise than conda (`numpy=>1.2`) |
| `duplicate-package`    | error    | one package with two different constraints (conda keeps one)           |
|                        | warning  | one package listed twice the same way                                    |
| `cudatoolkit-pytorch2` | error    | `cudatoolkit` with the pytorch channel's pytorch >= 2.0, whose CUDA builds need `pytorch-cuda`: the solve quietly picks the CPU build |
| `cuda-needs-nvidia`    | error    | the public `pytorch` channel's `pytorch-cuda` (or CUDA build) without the `nvidia` channel its CUDA libraries come from (a local or mirror channel is not judged) |
| `cuda-unpinned`        | warning  | a CUDA build (`*cuda*`, `cu118`, `pytorch-cuda`) and no CUDA version pinned |
| `unpinned-pytorch`     | warning  | `pytorch` (or pip's `torch`) without a version                           |
| `pip-without-pip`      | warning  | a `pip:` list but no `pip` in dependencies (conda adds some pip itself)  |
| `conda-and-pip`        | warning  | one package from both conda and pip (pip's `torch` over conda's `pytorch` too) |
| `build-string`         | warning  | an exact build string: it exists on one platform only (the advice to keep `*cuda*` only where the build is a CUDA one) |
| `channel-env-var`      | warning  | `${VAR}` in a channel: filled in from the environment at create time     |
| `selector`             | warning  | a `# [linux]` selector: conda env files ignore it (only conda-lock reads it) |
| `prefix`               | warning  | `prefix:` left in the file: a folder on the machine that exported it     |
| `no-dependencies`      | warning  | nothing to install                                                       |
| `no-channels`          | warning  | no channels: the result depends on each user's .condarc                  |
| `no-name`              | warning  | no name: `conda env create` then needs `-n`                              |

Which channel a package comes from is judged as conda does with strict channel priority:
an explicit ``channel::`` wins, else the first listed channel that carries it. A file that
cannot be read or parsed raises SpecError (exit 2) from ``load_spec`` instead of a finding.
The `not-text`, `invalid-pip` and `unknown-installer` errors come from ``spec.Problem``:
lock and create refuse the same files (exit 2).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from envkit.conda.platforms import admits_at_least, lowest_version
from envkit.conda.prefixes import env_name_problem
from envkit.conda.spec import KNOWN_KEYS, EnvironmentSpec, Item, load_spec
from envkit.errors import EXIT_OK, EXIT_REFUSED

if TYPE_CHECKING:
    from rattler import MatchSpec

Severity = Literal["error", "warning"]

# Misnamed keys difflib cannot connect to the right one.
_KEY_ALIASES = {"requirements": "dependencies", "packages": "dependencies", "deps": "dependencies", "env": "variables"}
# Channels that carry pytorch, for judging where an unqualified `pytorch` comes from.
_PYTORCH_CARRIERS = ("pytorch", "conda-forge", "defaults", "anaconda", "main")
_CUDA_PINS = frozenset({"pytorch-cuda", "cudatoolkit", "cuda-version", "cuda-toolkit", "cuda-runtime", "cuda", "cuda-cudart"})
# A build string that picks a CUDA variant: `*cuda*`, `py3.11_cuda11.8*`, conda-forge's `cuda118py311h..`,
# `cu118`; not `nocuda`, `cuda_none`, `*cpu*` or `py3.11_0` (the word must not be glued to letters before it).
_CUDA_BUILD = re.compile(r"(?<![a-z])(?:cuda(?!_?none)(?=[0-9_.*-]|$)|cu\d{2,3}(?![0-9a-z]))", re.IGNORECASE)
_CUDA_BUILD_VERSION = re.compile(r"(?<![a-z])(?:cuda_?\d|cu\d{3})", re.IGNORECASE)
_CPU_BUILD = re.compile(r"(?<![a-z])cpu(?![a-z])", re.IGNORECASE)
# The public pytorch channel: by name, or its anaconda.org URL (a mirror elsewhere is not it).
_PUBLIC_PYTORCH = re.compile(r"(?:https?://(?:conda\.)?anaconda\.org/)?pytorch(?:-nightly)?(?:/label/[^/]+)?", re.IGNORECASE)
_SELECTOR = re.compile(r"#\s*\[[^\]]+\]")
_ENV_VAR = re.compile(r"\$\{?[A-Za-z_]\w*\}?")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    severity: Severity
    code: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "severity": self.severity, "code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class LintReport:
    path: str
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if self.errors else EXIT_OK

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.path,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_json() for f in self.findings],
        }


def lint(path: str | os.PathLike[str]) -> LintReport:
    """Lint the environment file at `path`; SpecError (exit 2) when it cannot be read or parsed."""
    return lint_spec(load_spec(path))


def lint_spec(spec: EnvironmentSpec) -> LintReport:
    findings = list(_Linter(spec).run())
    findings.sort(key=lambda f: (f.line, f.severity != "error"))
    return LintReport(str(spec.path), tuple(findings))


def _channel_name(channel: str) -> str:
    """`https://conda.anaconda.org/nvidia/` -> `nvidia`; `nvidia/label/cuda-11.8.0` -> `nvidia`."""
    channel = channel.rstrip("/")
    if "://" in channel:
        parts = channel.split("://", 1)[1].split("/")
        return (parts[1] if len(parts) > 1 else parts[0]).lower()
    return channel.split("/")[0].lower()


def _is_public_pytorch(channel: str) -> bool:
    return bool(_PUBLIC_PYTORCH.fullmatch(channel.strip().rstrip("/")))


def _pip_name(text: str) -> tuple[str, str] | None:
    """`Torch >= 2.0` -> ('torch', '>=2.0'), by packaging's own parser; None for options, URLs, paths
    and lines that are not requirements (`-e ./x`, `git+https://...`; spec.pip_line_problem judges those)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if text.lstrip().startswith("-"):
        return None
    try:
        req = Requirement(re.split(r"\s+(?=--)", text.strip())[0])
    except InvalidRequirement:
        return None
    if req.url:
        return None
    return canonicalize_name(req.name), str(req.specifier)


def _picks_cuda(build: str | None) -> bool:
    """Does this build string (or pattern) select a CUDA variant? `*cuda*`, `py3.11_cuda11.8*`, `cu118`: yes."""
    return build is not None and _CUDA_BUILD.search(build) is not None


def _may_be_2_or_newer(version: str | None) -> bool:
    """Could this pytorch version constraint admit 2.0 or later? Unpinned: yes (the newest is 2.x).
    Matched by rattler, as conda does (`2` == `2.0.0`); 2.0 pre-releases are not counted as 2.x here."""
    return version is None or admits_at_least(version, "2")


def _name(spec: MatchSpec) -> str:
    return spec.name.normalized if spec.name is not None else ""


def _channel(spec: MatchSpec) -> str | None:
    """The channel a `channel::name` spec names, as the URL rattler resolves it to (a name is on anaconda.org)."""
    return spec.channel.base_url if spec.channel is not None else None


# -- a dependency line, read by rattler's MatchSpec; the reason and fix when it is not a spec ------

# Bracket keys rattler reads that conda knows too.
_BRACKET_KEYS = ("build", "build_number", "channel", "fn", "license", "license_family", "md5", "sha256", "subdir",
                 "track_features", "url", "version")
_BUILD = re.compile(r"[0-9A-Za-z_.+!*-]+")
_OPERATOR_TYPOS = {"=>": ">=", "=<": "<=", "=!": "!=", "<>": "!="}


def parse_dependency(text: str) -> MatchSpec | str:
    """rattler's MatchSpec of a conda dependency line, read as conda reads environment files
    (``strict=False``: ``numpy 1.26.4 py311_0``, ``pytorch=2.0.1=*cuda*``); else why it is not a spec and
    what to write instead: rattler rejects it, or reads it only by guessing at something conda rejects
    (a stray ``=``, a build string with a space or a ``$``, a channel with a space)."""
    from rattler import MatchSpec
    from rattler.exceptions import InvalidMatchSpecError

    line = text.strip()
    if not line:
        return "it is empty; write a package name"
    # conda reads `NAME VERSION =BUILD` (a space, then one `=`) as `NAME VERSION BUILD`; rattler keeps the `=`
    name, tail = re.match(r"([^\s=<>!~]*)(.*)", line, re.DOTALL).groups()  # type: ignore[union-attr]
    line = name + re.sub(r"(\S)\s+=(?=[^\s=<>!~,|\[]+$)", r"\1 ", tail)
    try:
        spec = MatchSpec(line, strict=False)
    except InvalidMatchSpecError as exc:
        return _rejected(line, str(exc).splitlines()[0])
    return _misread(line, spec) or spec


def _rejected(line: str, error: str) -> str:
    """rattler's parse error, as the mistake it usually is and its fix."""
    head = line.split("[", 1)[0]
    if error == "missing package name":
        return "no package name before the version; write name>=1.0"
    if error.startswith("invalid package name") and "[" in line:
        return "brackets must close and come last, as in name[version='>=1.0']"
    name = re.match(r"invalid package name '([^']*)'|\"([^\"]*)\" looks like a glob", error)
    if name:
        return f"{name.group(1) or name.group(2)!r} is not a package name (letters, digits, '-', '_', '.')"
    if error.startswith("unable to parse version spec: "):
        return _version_problem(error.removeprefix("unable to parse version spec: ")) or error
    if error == "invalid bracket":
        return ("cannot read the brackets; write key=value pairs separated by commas, quoting values "
                "that hold a comma: [version='>=1,<2', build=*cuda*]")
    if error.startswith("invalid bracket key: "):
        key = error.removeprefix("invalid bracket key: ")
        return f"unknown field {key!r} in brackets; use one of {', '.join(_BRACKET_KEYS)}"
    if error.startswith("invalid build number spec"):
        value = re.search(r"build_number\s*=\s*['\"]?([^,'\"\]]*)", line)
        return f"build_number={value.group(1) if value else ''!r} is not a number (optionally after >=, <, ...)"
    return _empty_bracket_value(line) or _empty_version_part(head) or f"{error}; see conda's package match specifications"


def _version_problem(version: str) -> str | None:
    if version.count("(") != version.count(")"):
        return f"unbalanced parentheses in {version!r}"
    typo = re.search("|".join(map(re.escape, _OPERATOR_TYPOS)), version)
    if typo:
        return (f"`{typo.group(0)}` in {version!r} is not an operator (use ==, !=, <=, >=, ~=, =, <, >); "
                f"did you mean `{_OPERATOR_TYPOS[typo.group(0)]}`?")
    dangling = re.search(r"(==|!=|<=|>=|~=|=|<|>)(?=$|[,|])", version)
    if dangling:
        op = dangling.group(1)
        return f"`{op}` is not followed by a version; write {op}1.0 with no space, or drop it"
    if re.search(r"(^|[,|])([,|]|$)", version):
        return f"an empty constraint in {version!r} (a stray ',' or '|')"
    return None


def _empty_bracket_value(line: str) -> str | None:
    empty = re.search(r"\[.*?\b(\w+)\s*=\s*(?:''|\"\"|(?=[,\]]))", line)
    return f"the bracket field {empty.group(1)!r} has no value" if empty else None


def _empty_version_part(head: str) -> str | None:
    part = re.search(r"[\d*]*\.\.[\w.*]*|\d\w*\.(?=$|[\s=,|])", head)
    return f"{part.group(0)!r} has an empty version part; write e.g. 1.2 or 1.2.*" if part else None


def _misread(line: str, spec: MatchSpec) -> str | None:
    """What rattler accepted by guessing, where conda rejects the line or reads it otherwise."""
    head = line.split("[", 1)[0].strip()
    channel = head.rpartition("::")[0]
    version = re.sub(r"^[^\s=<>!~]+\s*", "", head.rpartition("::")[2])
    if channel and re.search(r"\s", channel):
        return f"{channel!r} before `::` is not a channel name or URL"
    if re.search(r"(?<![=<>!~])=\s", head):  # conda and rattler read `numpy = 1.2` as 1.2.*, but it reads as a typo
        return "`=` is not followed by a version; write =1.0 with no space, or drop it"
    problem = _empty_bracket_value(line) or _empty_version_part(head)
    if problem:
        return problem
    build = spec.build
    if build and "=" in build:  # `numpy==1.2==`: rattler takes the second `==` for a build
        return f"{version.lstrip('=<>!~')!r} is not a version: one `=` too many; write name==VERSION or name=VERSION=BUILD"
    if head.endswith("="):
        return f"{version!r} ends with '='; write version=BUILD or drop the trailing '='"
    if build and re.search(r"\s", build):
        return "too many space-separated parts; write name=version=build"
    if build and not _BUILD.fullmatch(build):
        return f"{build!r} is not a build string (letters, digits, '_', '.', '*')"
    return None


class _Linter:
    def __init__(self, spec: EnvironmentSpec) -> None:
        self.spec = spec
        self.path = str(spec.path)
        self.channels = [_channel_name(c) for c in spec.channels]
        self.parsed: list[tuple[Item, MatchSpec]] = []
        self.invalid: list[tuple[Item, str]] = []
        unusable = {p.line for p in spec.problems}  # reported once, by the problems rule
        self.pip_items = [i for i in spec.pip_items if i.line not in unusable]
        for item in (i for i in spec.conda_items if i.line not in unusable):
            parsed = parse_dependency(item.text)
            if isinstance(parsed, str):
                self.invalid.append((item, parsed))
            else:
                self.parsed.append((item, parsed))

    def finding(self, line: int, severity: Severity, code: str, message: str) -> Finding:
        return Finding(self.path, line, severity, code, message)

    def named(self, *names: str) -> list[tuple[Item, MatchSpec]]:
        return [(i, m) for i, m in self.parsed if _name(m) in names]

    def run(self) -> Iterator[Finding]:
        for rule in (
            self.file_extension, self.keys, self.problems, self.name, self.sections, self.specs, self.duplicates,
            self.cudatoolkit_with_pytorch2, self.cuda, self.unpinned_pytorch, self.pip,
            self.build_strings, self.channel_env_vars, self.selectors, self.prefix, self.missing,
        ):
            yield from rule()

    def file_extension(self) -> Iterator[Finding]:
        suffix = self.spec.path.suffix
        if suffix.lower() not in (".yml", ".yaml"):
            what = f"a {suffix} file" if suffix else "a file without an extension"
            yield self.finding(1, "error", "file-extension",
                               f"conda env create and conda-lock read an environment file only when it ends in .yml or .yaml, "
                               f"not {what}; rename it to {self.spec.path.stem}.yml")

    def keys(self) -> Iterator[Finding]:
        first: dict[str, int] = {}
        for key in self.spec.keys:
            if key.text in first:
                yield self.finding(key.line, "error", "duplicate-key",
                                   f"`{key.text}:` again (first at line {first[key.text]}); YAML keeps only the last one, "
                                   f"so everything under line {first[key.text]} is ignored; merge them into one `{key.text}:`")
                continue
            first[key.text] = key.line
            if key.text in KNOWN_KEYS:
                continue
            guess = _KEY_ALIASES.get(key.text.lower()) or next(iter(difflib.get_close_matches(key.text.lower(), KNOWN_KEYS, n=1, cutoff=0.6)), None)
            fix = f"did you mean `{guess}`?" if guess else f"the keys are {', '.join(KNOWN_KEYS)}; rename or remove it"
            yield self.finding(key.line, "error", "unknown-key",
                               f"unknown key `{key.text}`: conda ignores it and everything under it; {fix}")

    def problems(self) -> Iterator[Finding]:
        for problem in self.spec.problems:  # unknown-installer, not-text, invalid-pip: lock and create refuse these too
            yield self.finding(problem.line, "error", problem.code, problem.message)

    def name(self) -> Iterator[Finding]:
        name, line = self.spec.name, self.spec.key_line("name")
        if name is None or line is None or any(p.line == line for p in self.spec.problems):
            return
        problem = env_name_problem(name)
        if problem:
            yield self.finding(line, "error", "invalid-name", f"`name: {name}`: {problem}")

    def sections(self) -> Iterator[Finding]:
        pip_line = None
        for section in self.spec.sections:
            if section.text != "pip":
                continue  # unknown-installer is a spec Problem
            if pip_line is not None:
                yield self.finding(section.line, "error", "duplicate-pip",
                                   f"a second `pip:` section (first at line {pip_line}); conda keeps only the last one, so the "
                                   f"packages under line {pip_line} are not installed; merge them into one `pip:` list")
            else:
                pip_line = section.line

    def specs(self) -> Iterator[Finding]:
        for item, reason in self.invalid:
            yield self.finding(item.line, "error", "invalid-spec", f"`{item.text}` is not a valid conda package spec: {reason}")

    def duplicates(self) -> Iterator[Finding]:
        def report(entries: list[tuple[Item, str, str]], where: str) -> Iterator[Finding]:
            seen: dict[str, tuple[Item, str]] = {}
            for item, name, constraint in entries:
                if name not in seen:
                    seen[name] = (item, constraint)
                    continue
                first, first_constraint = seen[name]
                if constraint == first_constraint:
                    yield self.finding(item.line, "warning", "duplicate-package",
                                       f"`{item.text}` is listed twice in {where} (also line {first.line}); remove one")
                else:
                    yield self.finding(item.line, "error", "duplicate-package",
                                       f"`{item.text}` and `{first.text}` (line {first.line}) both constrain {name} in {where}; "
                                       "only one of them takes effect; keep one line with the constraint you mean")

        conda = [(i, _name(m), f"{m.version or ''}={m.build or ''}") for i, m in self.parsed]
        yield from report(conda, "the conda dependencies")
        pip = []
        for item in self.pip_items:
            parsed = _pip_name(item.text)
            if parsed:
                pip.append((item, parsed[0], re.sub(r"\s+", "", parsed[1])))
        yield from report(pip, "the pip list")

    def pytorch_channel_provides(self, spec: MatchSpec) -> bool:
        """Does the pytorch channel supply this package, under strict channel priority?"""
        channel = _channel(spec)
        if channel:
            return _channel_name(channel) == "pytorch"
        carriers = [c for c in self.channels if c in _PYTORCH_CARRIERS]
        return bool(carriers) and carriers[0] == "pytorch"

    def public_pytorch_provides(self, spec: MatchSpec) -> bool:
        """Does this package come from the public pytorch channel (not a local channel or a mirror)?"""
        channel = _channel(spec)
        if channel:
            return _is_public_pytorch(channel)
        if _name(spec) == "pytorch-cuda":  # only the pytorch channel has it
            return any(_is_public_pytorch(c) for c in self.spec.channels)
        carriers = [c for c in self.spec.channels if _is_public_pytorch(c) or _channel_name(c) in _PYTORCH_CARRIERS]
        return bool(carriers) and _is_public_pytorch(carriers[0])

    def cudatoolkit_with_pytorch2(self) -> Iterator[Finding]:
        pytorch = [(i, m) for i, m in self.named("pytorch") if self.pytorch_channel_provides(m) and _may_be_2_or_newer(m.version)]
        if not pytorch or self.named("pytorch-cuda") or any(_picks_cuda(m.build) for _, m in pytorch):
            return  # the CUDA build is asked for another way; cudatoolkit beside it (an export lists it) does no harm
        torch_item, torch_spec = pytorch[0]
        which = f"`{torch_item.text}`" if torch_spec.version else "an unpinned `pytorch` (the newest is 2.x)"
        nvidia = "" if "nvidia" in self.channels else " and add the `nvidia` channel"
        for item, spec in self.named("cudatoolkit"):
            lowest = lowest_version(spec.version) if spec.version else None
            cuda = lowest.extend_to_length(2).as_major_minor() if lowest is not None else None
            replacement = f"`pytorch-cuda={cuda[0]}.{cuda[1]}`" if cuda else "`pytorch-cuda=X.Y` (11.7 or 11.8 for pytorch 2.0)"
            yield self.finding(item.line, "error", "cudatoolkit-pytorch2",
                               f"`{item.text}` does nothing for {which} from the pytorch channel (line {torch_item.line}): "
                               f"since 2.0 its CUDA builds depend on `pytorch-cuda`, not cudatoolkit, so the solver quietly "
                               f"installs the CPU build; replace this line with {replacement}{nvidia}")

    def cuda(self) -> Iterator[Finding]:
        requests = [(i, m) for i, m in self.parsed if _name(m) == "pytorch-cuda" or _picks_cuda(m.build)]
        if not requests:
            return
        pinned = any((_name(m) in _CUDA_PINS and m.version and m.version.strip("=*") != "")
                     or (m.build and _CUDA_BUILD_VERSION.search(m.build)) for _, m in self.parsed)
        item = requests[0][0]
        if not pinned:
            yield self.finding(item.line, "warning", "cuda-unpinned",
                               f"`{item.text}` asks for a CUDA build but nothing pins the CUDA version, so each solve may pick "
                               f"another one (and it must suit the driver); pin it: `pytorch-cuda=11.8` (pytorch channel) or "
                               f"`cuda-version=11.8` (conda-forge)")
        # Only the public pytorch channel is known to need nvidia's; a local channel or a mirror that solves is not judged.
        needs_nvidia = [(i, m) for i, m in requests
                        if _name(m) in ("pytorch-cuda", "pytorch") and self.public_pytorch_provides(m)]
        uses_nvidia = "nvidia" in self.channels or any(_channel_name(_channel(m) or "") == "nvidia" for _, m in self.parsed)
        if needs_nvidia and not uses_nvidia:
            item = needs_nvidia[0][0]
            yield self.finding(item.line, "error", "cuda-needs-nvidia",
                               f"`{item.text}`: the pytorch channel's CUDA builds depend on CUDA libraries published only on the "
                               f"nvidia channel, so this does not solve; add `- nvidia` to channels after `pytorch`")

    def unpinned_pytorch(self) -> Iterator[Finding]:
        why = ("otherwise every lock or create may pick another release, and a checkpoint written by a newer "
               "torch does not load on an older one")
        for item, spec in self.named("pytorch"):
            if spec.version is None or spec.version.strip("=*") == "":
                yield self.finding(item.line, "warning", "unpinned-pytorch",
                                   f"`{item.text}` has no version; pin it (e.g. `pytorch=2.0.1`): {why}")
        for item in self.pip_items:
            parsed = _pip_name(item.text)
            if parsed and parsed[0] == "torch" and not parsed[1]:
                yield self.finding(item.line, "warning", "unpinned-pytorch",
                                   f"pip's `{item.text}` has no version; pin it (e.g. `torch==2.0.1`): {why}")

    def pip(self) -> Iterator[Finding]:
        pip_sections = [s for s in self.spec.sections if s.text == "pip"]
        if self.pip_items and not self.named("pip"):
            yield self.finding(pip_sections[-1].line, "warning", "pip-without-pip",
                               "a `pip:` list but no `pip` in dependencies: conda adds a pip of its own choosing; "
                               "add `- pip` to dependencies")
        conda_names = {re.sub(r"[-_.]+", "-", _name(m)): i for i, m in self.parsed}
        for item in self.pip_items:
            parsed = _pip_name(item.text)
            if not parsed or parsed[0] == "pip":
                continue
            name = parsed[0]
            if name == "torch" and "pytorch" in conda_names:
                yield self.finding(item.line, "warning", "conda-and-pip",
                                   f"pip's `{item.text}` installs over conda's `{conda_names['pytorch'].text}` (line "
                                   f"{conda_names['pytorch'].line}), with the CUDA of the wheel rather than the one pinned here; "
                                   "keep one of them")
            elif name in conda_names:
                yield self.finding(item.line, "warning", "conda-and-pip",
                                   f"`{name}` comes from conda (line {conda_names[name].line}) and again from pip; pip's copy "
                                   "overwrites conda's files behind conda's back; keep one (usually the conda one)")

    def build_strings(self) -> Iterator[Finding]:
        for item, spec in self.parsed:
            if spec.build and "*" not in spec.build:
                if _picks_cuda(spec.build):
                    keep = "; to keep the CUDA variant, use a pattern such as `*cuda*`"
                elif _CPU_BUILD.search(spec.build):
                    keep = "; to keep the CPU variant, use a pattern such as `*cpu*`"
                else:
                    keep = ""
                yield self.finding(item.line, "warning", "build-string",
                                   f"`{item.text}` pins the exact build `{spec.build}`, which exists for one platform only; "
                                   f"drop it (conda env export --no-builds){keep}")

    def channel_env_vars(self) -> Iterator[Finding]:
        for item in self.spec.channel_items:
            variables = _ENV_VAR.findall(item.text)
            if variables:
                yield self.finding(item.line, "warning", "channel-env-var",
                                   f"channel `{item.text}` uses {', '.join(variables)}, which conda fills in from the environment "
                                   "when it runs; lock and create fail (or reach another URL) wherever it is unset, so set it "
                                   "there, or configure the channel's token with `conda config` instead")

    def selectors(self) -> Iterator[Finding]:
        for item in (*self.spec.channel_items, *self.spec.conda_items, *self.pip_items):
            selector = _SELECTOR.search(item.comment)
            if selector:
                yield self.finding(item.line, "warning", "selector",
                                   f"`{selector.group(0)}` is a conda-build selector; conda env create ignores it and installs "
                                   f"`{item.text}` on every platform (only conda-lock reads selectors); use one file per "
                                   "platform, or lock the file with `envkit lock`")

    def prefix(self) -> Iterator[Finding]:
        line = self.spec.key_line("prefix")
        if line is not None and self.spec.prefix:
            yield self.finding(line, "warning", "prefix",
                               f"`prefix: {self.spec.prefix}` is a folder on the machine that exported this file; remove the "
                               "line (conda env export --no-builds | grep -v '^prefix:')")

    def missing(self) -> Iterator[Finding]:
        spec = self.spec
        if not spec.conda_items and not spec.pip_items:
            line = spec.key_line("dependencies") or 1
            yield self.finding(line, "warning", "no-dependencies",
                               "no packages: conda creates an empty environment; list them under `dependencies:`")
        if not spec.channel_items:
            yield self.finding(1, "warning", "no-channels",
                               "no `channels:`, so what gets installed depends on each user's .condarc; "
                               "list the channels, e.g. `- conda-forge`")
        if spec.name is None:
            yield self.finding(1, "warning", "no-name", "no `name:`; conda env create then needs -n NAME; add `name: ...`")
