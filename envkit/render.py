"""Human-readable text for the command line. JSON output does not pass through here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from envkit.checkpoint import CheckReport, Inspection, VerifyResult
    from envkit.checkpoint.adopt import Adoption
    from envkit.checkpoint.directory import FolderRow
    from envkit.checkpoint.folder import StampedFolder
    from envkit.checkpoint.reader import CheckpointFile
    from envkit.checkpoint.resume_check import DiffReport
    from envkit.checkpoint.trial import TensorDifference, TrialReport, TrialResult
    from envkit.conda.channels import ResolvedChannel
    from envkit.conda.create import CreatePlan
    from envkit.conda.doctor import DoctorReport, Drift
    from envkit.conda.lint import LintReport
    from envkit.conda.lock import LockCheck, LockResult
    from envkit.conda.recreate import Recreated
    from envkit.fingerprint import Fingerprint
    from envkit.policy import Difference

MAX_PACKAGE_ROWS = 12
_ORDER = ("refuse", "warn", "info", "ok")
_MARK = {"refuse": "REFUSE", "warn": "warn", "info": "info", "ok": "ok"}


def _v(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def fingerprint_lines(fp: Fingerprint) -> list[tuple[str, str]]:
    gpus = ", ".join(f"{d.name} (sm {d.capability})" for d in fp.gpu.devices) or "none"
    rows = [
        ("python", f"{_v(fp.python.version)} ({_v(fp.python.implementation)})"),
        ("platform", f"{_v(fp.platform.system)} {_v(fp.platform.machine)}, {_v(fp.platform.libc)}, {_v(fp.platform.conda_subdir)}"),
        ("torch", _v(fp.torch.version) + (f"  build {fp.torch.build}" if fp.torch.build else "")),
        ("cuda", _v(fp.torch.cuda)),
        ("cudnn", _v(fp.torch.cudnn)),
        ("driver", _v(fp.gpu.driver)),
        ("gpus", gpus),
        ("nccl", _v(fp.gpu.nccl)),
        ("packages", f"{len(fp.packages)} ({fp.packages_digest[:19]})"),
    ]
    if fp.environment:
        rows.append(("lock", f"{_v(fp.environment.lock_hash)} ({_v(fp.environment.lock_platform)})"))
    rows.append(("digest", fp.digest))
    return rows


def fingerprint_text(fp: Fingerprint) -> str:
    """What ``envkit fingerprint`` prints: one aligned row per part of the environment."""
    return table(fingerprint_lines(fp), indent="")


def wrote_text(path: object, detail: str | None = None) -> str:
    """``wrote PATH (DETAIL)``: what a command that wrote a file says."""
    return f"wrote {path}" + (f" ({detail})" if detail else "")


def table(rows: Iterable[tuple[str, str]], indent: str = "  ") -> str:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in rows)


def difference_lines(rows: Iterable[Difference]) -> list[str]:
    rows = sorted(rows, key=lambda r: _ORDER.index(r.severity))
    shown = [r for r in rows if not r.field.startswith("packages.")]
    packages = [r for r in rows if r.field.startswith("packages.")]
    shown += packages[:MAX_PACKAGE_ROWS]
    width = max((len(r.field) for r in shown), default=0)
    lines = [
        f"  {_MARK[r.severity].ljust(6)} {r.field.ljust(width)}  {_values(r)}\n"
        f"  {'':6} {'':{width}}  {r.reason}"
        for r in shown
    ]
    if len(packages) > MAX_PACKAGE_ROWS:
        lines.append(f"  ... and {len(packages) - MAX_PACKAGE_ROWS} more package changes (--json lists all)")
    return lines


def _values(r: Difference) -> str:
    if r.field == "stamp":  # policy.STAMP_FIELD: None marks a side without a stamp
        if r.stored is None and r.live is None:
            return "unstamped on both sides: no environment recorded"
        return "unstamped: no environment recorded" + (" (the second side)" if r.live is None else "")
    return f"{_v(r.stored)} -> {_v(r.live)}"


def diff_text(report: DiffReport) -> str:
    """What ``envkit diff`` prints: the graded differences and a verdict that agrees with the exit code."""
    out = [f"{report.a} -> {report.b}  (policy {report.policy.preset})"]
    out.extend(difference_lines(report.differences) if report.differences else ["  no differences"])
    out.append("")
    out.append({
        "ok": f"ok: {report.b} may resume a checkpoint written by {report.a}",
        "warn": f"warn: {report.b} may resume a checkpoint written by {report.a}, but read the warnings above",
        "refuse": f"refuse: {report.b} may not resume a checkpoint written by {report.a} under policy "
                  f"{report.policy.preset}; fix the rows marked REFUSE above (exit 1)",
    }[report.verdict])
    return "\n".join(out)


def json_document(doc: object) -> str:
    """How every ``--json`` option prints: one indented document."""
    import json

    return json.dumps(doc, indent=2, sort_keys=False, default=str)


def check_output(
    report: CheckReport,
    *,
    as_json: bool,
    against: object = None,
    prefix: object = None,
    fail_on: str = "refuse",
    verified: VerifyResult | None = None,
) -> str:
    """What ``envkit check`` prints (without the final newline), whichever path parsed the command line.

    ``verified``: the result of ``--verify``, added as a ``verify`` key or a last line.
    """
    if as_json:
        doc = report.to_json()
        if verified is not None:
            doc["verify"] = verified.to_json()
        return json_document(doc)
    text = check_text(report, "against" if against is not None else "prefix" if prefix is not None else "here", fail_on)
    return text if verified is None else f"{text}\n{check_verify_text(verified)}"


def verdict_line(report: CheckReport, fail_on: str = "refuse") -> str:
    """The last line of ``envkit check``: the verdict, in words that agree with the exit code."""
    if report.verdict == "refuse":
        return "refuse: this environment may not resume it; fix the rows marked REFUSE above (exit 1)"
    if report.verdict == "warn" and report.exit_code(fail_on) != 0:
        return ("warn: failing because of --fail-on warn: this environment differs from the checkpoint's; "
                "fix the warnings above, or drop --fail-on warn to resume anyway (exit 1)")
    if report.verdict == "warn":
        return "warn: this environment may resume it, but read the warnings above"
    return "ok: this environment may resume it"


def check_text(report: CheckReport, against: str, fail_on: str = "refuse") -> str:
    out = [f"{report.checkpoint}  ({report.info.format}, policy {report.policy.preset})"]
    stored = report.stored
    if stored is None and report.evidence:
        out.append("  no envkit stamp (unstamped): what its files say, partial evidence only:")
        out.extend(evidence_lines(report.evidence))
        out.append(f"  stamp it once it is whole: envkit stamp {report.checkpoint}")
    elif stored is None:
        out.append("  no envkit stamp: nothing is known of the environment that wrote it")
    else:
        meta = report.info.stamp.meta if report.info.stamp else {}
        where = ", ".join(f"{k} {meta[k]}" for k in ("epoch", "step") if meta.get(k) is not None)
        out.append(f"  written by  torch {_v(stored.torch.version)}, CUDA {_v(stored.torch.cuda)}, cuDNN {_v(stored.torch.cudnn)}, "
                   f"Python {_v(stored.python.version)} on {_v(stored.host.hostname)} at {_v(meta.get('saved_at'))}"
                   + (f" ({where})" if where else ""))
    live = report.live
    out.append(f"  {against.ljust(10)}  torch {_v(live.torch.version)}, CUDA {_v(live.torch.cuda)}, cuDNN {_v(live.torch.cudnn)}, "
               f"Python {_v(live.python.version)}")
    if report.differences:
        out.append("")
        out.extend(difference_lines(report.differences))
    else:
        out.append("  no differences")
    out.append("")
    out.append(verdict_line(report, fail_on))
    return "\n".join(out)


def _fact(value: object) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return _v(value)


def evidence_lines(evidence: Mapping[str, Mapping[str, object]], indent: str = "    ") -> list[str]:
    """``config.json  transformers_version 4.57.1, torch_dtype float32``: what an unstamped folder's files say."""
    if not evidence:
        return []
    width = max(len(name) for name in evidence)
    return [f"{indent}{name.ljust(width)}  " + (", ".join(f"{k} {_fact(v)}" for k, v in facts.items()) or "-")
            for name, facts in evidence.items()]


def stamp_text(result: StampedFolder) -> str:
    """What ``envkit stamp DIR`` prints."""
    meta = result.stamp.meta
    what = ", ".join(f"{k} {meta[k]}" for k in ("framework", "step") if meta.get(k) is not None)
    digest = result.stamp.payload.digest if result.stamp.payload else "-"
    head = "stamped" if result.written else "already stamped, files unchanged:"
    return (f"{head} {result.path}: {_count(result.files, 'file')}, {_size_text(result.size)} ({digest})"
            + (f"; {what}" if what else ""))


def _folder_inspect_text(insp: Inspection) -> str:
    info = insp.info
    rows = [
        ("format", info.format),
        ("size", f"{info.size:,} bytes in {_count(len(insp.records), 'file')}"),
        ("stamped", f"yes ({STAMP_FILE})" if info.stamped else "no"),
    ]
    if info.stamp:
        meta = info.stamp.meta
        rows += [(k, _v(meta.get(k))) for k in ("framework", "epoch", "step", "saved_at")]
        rows.append(("payload", f"{info.stamp.payload.digest} over {info.stamp.payload.length:,} bytes" if info.stamp.payload else "-"))
        rows += [(f"env {k}", v) for k, v in fingerprint_lines(info.stamp.fingerprint)]
    shown = insp.records[:INSPECT_FILES_SHOWN]
    width = max((len(name) for name, _ in shown), default=0)
    files = [f"  {name.ljust(width)}  {size:,}" for name, size in shown]
    if len(insp.records) > len(shown):
        files.append(f"  ... and {len(insp.records) - len(shown)} more")
    notes = [f"  note: {n}" for n in insp.extra.get("notes", ())]
    return (f"{info.path}\n" + table(rows) + "\nfiles:\n" + "\n".join(files) + _tensor_lines(insp)
            + ("\n" + "\n".join(notes) if notes else ""))


INSPECT_FILES_SHOWN = 200
STAMP_FILE = "envkit.json"


def inspect_text(insp: Inspection) -> str:
    info = insp.info
    if info.format == "folder":
        return _folder_inspect_text(insp)
    rows = [
        ("format", info.format),
        ("size", f"{info.size:,} bytes"),
        ("prefix", _v(info.prefix)),
        ("serialization", _v(info.serialization_version)),
        ("byteorder", _v(insp.byteorder)),
        ("records", str(len(insp.records)) if insp.records else "-"),
        ("storages", f"{len(insp.storages)} on {', '.join(insp.devices) or '-'}"),
        ("top level", ", ".join(f"{k}: {t}" for k, t in insp.top_level) or "-"),
        ("stamped", f"yes ({info.stamp_source})" if info.stamped else "no"),
    ]
    if insp.extra.get("metadata"):  # a safetensors file's __metadata__, the stamp aside
        rows.append(("metadata", ", ".join(f"{k}={v[:40]!r}" for k, v in list(insp.extra["metadata"].items())[:10])))
    if info.stamp:
        meta = info.stamp.meta
        rows += [
            ("epoch", _v(meta.get("epoch"))),
            ("step", _v(meta.get("step"))),
            ("metrics", ", ".join(f"{k}={v}" for k, v in info.stamp.metrics.items()) or "-"),
            ("saved at", _v(meta.get("saved_at"))),
            ("payload", f"{info.stamp.payload.digest} over {info.stamp.payload.length:,} bytes" if info.stamp.payload else "-"),
        ]
        rows += [(f"env {k}", v) for k, v in fingerprint_lines(info.stamp.fingerprint)]
    return f"{info.path}\n" + table(rows) + _tensor_lines(insp)


INSPECT_TENSORS_SHOWN = 50


def _tensor_lines(insp: Inspection) -> str:
    """``model.weight  float32 [4, 8]`` for the first tensors, then how many more."""
    if not insp.tensor_count:
        return ""
    shown = insp.tensors[:INSPECT_TENSORS_SHOWN]
    width = max(len(t.name) for t in shown)
    lines = [f"  {t.name.ljust(width)}  {t.label}" for t in shown]
    more = insp.tensor_count - len(shown)
    bound = "" if insp.tensors_complete else " (the walk stopped at its bound: there may be more)"
    if more > 0 or bound:
        lines.append(f"  ... and {more} more{bound}" if more > 0 else f"  ...{bound}")
    return f"\ntensors ({insp.tensor_count}{'' if insp.tensors_complete else '+'}):\n" + "\n".join(lines)


def verify_text(result: VerifyResult) -> str:
    """One line per checkpoint; an unreadable one is bad input and goes to stderr as an error instead."""
    if result.status == "ok":
        digest = result.sidecar.label if result.sidecar is not None else _payload_digest(result)
        return f"ok         {result.path}  ({digest})"
    if result.status == "unstamped":
        return f"unstamped  {result.problem}"
    if result.status == "corrupt":
        return f"CORRUPT    {result.problem}"
    return f"envkit: error: {result.problem}"


def _payload_digest(result: VerifyResult) -> str:
    stamp = result.info.stamp if result.info else None
    return stamp.payload.digest if stamp and stamp.payload else "-"


def check_verify_text(result: VerifyResult) -> str:
    """The line ``envkit check --verify`` adds after the verdict."""
    if result.status == "ok" and result.sidecar is not None:
        return f"verified: the file matches its checksum {result.sidecar.label} ({result.sidecar.sidecars[0].path.name})"
    if result.status == "ok":
        digest = _payload_digest(result)
        return f"verified: the payload matches its stamp ({digest})"
    if result.status == "unstamped":
        return "verify: unstamped, nothing to verify against; stamp it by saving with envkit.save"
    if result.status == "unreadable":
        return f"verify: {result.problem}"
    return f"CORRUPT: {result.problem}; do not resume from this file, use an earlier checkpoint"


PROGRESS_MIN_BYTES = 100 * 1000 * 1000  # verify shows progress on a terminal for payloads over this


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class TerminalProgress:
    """``verifying NAME: 43% of 2.1 GB`` on a terminal, updated in place; erased when done."""

    def __init__(self, name: str, stream: object) -> None:
        self._name, self._stream, self._shown, self._width = name, stream, -1, 0

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if percent == self._shown:
            return
        self._shown = percent
        line = f"verifying {self._name}: {percent}% of {_size_text(total)}"
        self._width = max(self._width, len(line))
        self._stream.write("\r" + line.ljust(self._width))  # type: ignore[attr-defined]
        self._stream.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")  # type: ignore[attr-defined]
            self._stream.flush()  # type: ignore[attr-defined]


def verify_with_progress(path: str | os.PathLike[str], info: CheckpointFile | None = None, *, show: bool) -> VerifyResult:
    """``verify``, with a progress line on stderr when ``show``, stderr is a terminal and the payload is large."""
    import os
    import sys

    from envkit.checkpoint.integrity import verify

    stream = sys.stderr
    try:
        large = os.stat(path).st_size > PROGRESS_MIN_BYTES
    except (OSError, ValueError, TypeError):  # TypeError: a URL (no local size)
        large = False
    if not (show and large and stream.isatty()):
        return verify(path, info)
    bar = TerminalProgress(os.path.basename(os.fspath(path)), stream)
    try:
        return verify(path, info, progress=bar)
    finally:
        bar.close()


def folder_text(rows: list[FolderRow]) -> str:
    if not rows:
        return "no checkpoints"
    table_rows = [("checkpoint", "epoch", "step", "metrics", "size", "valid", "environment", "verdict")]
    for row in rows:
        i = row.info
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in i.metrics.items())
        table_rows.append((
            i.path.name, _v(i.epoch), _v(i.step), metrics or "-", f"{i.size:,}",
            "yes" if i.valid else "unstamped" if row.stamped is False else "-" if i.valid is None else "NO",
            (row.environment_digest or "-")[7:19] or "-", _v(row.verdict),
        ))
    widths = [max(len(r[c]) for r in table_rows) for c in range(len(table_rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table_rows]
    problems = [f"  {row.info.problem}" for row in rows if row.info.problem]
    return "\n".join(lines + (["", "problems:", *problems] if problems else []))


# -- environments (conda) ------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def lint_text(report: LintReport) -> str:
    """What ``envkit lint`` prints: one `FILE:LINE: severity: message` line per finding, then a summary line."""
    lines = [str(f) for f in report.findings]
    if not report.findings:
        lines.append(f"{report.path}: ok")
    else:
        lines.append(f"{report.path}: {_count(len(report.errors), 'error')}, {_count(len(report.warnings), 'warning')}")
    return "\n".join(lines)


def lock_text(result: LockResult, *, verbose: bool = False) -> str:
    """What ``envkit lock`` prints once the lock is written (``-v``: each channel's URL and the setting that gave it)."""
    text = wrote_text(result.path, f"{', '.join(result.platforms)}; {result.packages} packages")
    return "\n".join([text, *channel_lines(result.channels)]) if verbose else text


def channel_lines(channels: Iterable[ResolvedChannel]) -> list[str]:
    """``channel conda-forge -> https://mirror/conda-forge  (custom_channels.conda-forge in ~/.condarc)``, one per URL."""
    return [f"channel  {c.name} -> {c.url}" + (f"  ({c.via})" if c.via else "") for c in channels]


def lock_check_text(result: LockCheck) -> str:
    """What ``envkit lock --check`` prints: up to date, or stale and each change (for stderr)."""
    if result.fresh:
        return f"{result.path}: up to date"
    return "\n".join([f"{result.path}: stale", *(f"  {change}" for change in result.changes)])


def create_text(plan: CreatePlan, *, dry_run: bool = False, verbose: bool = False) -> str:
    """What ``envkit create`` prints: the plan with --dry-run, else the environment it created
    (``-v``: and where its channels and its folder came from)."""
    where = [f"prefix from {plan.prefix_via}"] if plan.prefix_via else []
    if not dry_run:
        return "\n".join([f"created {plan.prefix}", *where, *channel_lines(plan.channels)]) if verbose else f"created {plan.prefix}"
    out = [
        f"prefix:   {plan.prefix}" + (f"  ({plan.prefix_via})" if plan.prefix_via else ""),
        f"platform: {plan.platform}",
        f"engine:   {plan.engine.name}",
        f"lock:     {plan.lockfile} ({plan.lock.hash_for(plan.platform)})" + (", solved from the spec now" if plan.kept_lock else ""),
    ]
    if plan.channels:
        out.append(f"channels ({len(plan.channels)}):")
        out += [f"  {line.removeprefix('channel  ')}" for line in channel_lines(plan.channels)]
    out += [
        f"conda packages ({len(plan.packages)}):",
    ]
    out += [f"  {p.name} {p.version} {p.build}" for p in sorted(plan.packages, key=lambda p: p.name)]
    if plan.spec is not None and plan.spec.variables:
        out.append(f"variables ({len(plan.spec.variables)}):")
        out += [f"  {k}={v}" for k, v in sorted(plan.spec.variables.items())]
    if plan.pip:
        out.append(f"pip packages ({len(plan.pip)}):")
        out += [f"  {p.name}=={p.version} sha256:{p.sha256}" for p in sorted(plan.pip, key=lambda p: p.name)]
    return "\n".join(out)


def drift_line(d: Drift) -> str:
    """One difference ``envkit doctor`` found: `changed  conda numpy: 1.26.4 py311_0 -> ...`."""
    if d.kind == "changed":
        return f"changed  {d.manager:5} {d.name}: {d.expected} -> {d.found}"
    if d.kind == "stale-lock":
        return f"stale    lock  {d.name}: {d.found}"
    return f"{d.kind:8} {d.manager:5} {d.name} {d.expected or d.found}"


def doctor_text(report: DoctorReport) -> str:
    """What ``envkit doctor`` prints: matches, or how many differences and one line each."""
    if report.ok:
        return f"{report.prefix}: matches {report.lockfile} ({report.platform})"
    head = f"{report.prefix}: {len(report.drift)} difference(s) from {report.lockfile} ({report.platform})"
    return "\n".join([head, *(f"  {drift_line(d)}" for d in report.drift)])


def recreate_text(result: Recreated) -> str:
    """What ``envkit recreate`` prints: one `wrote` line per file."""
    if result.requirements is not None:
        unpinned = f"; {len(result.not_pinned)} left as comments" if result.not_pinned else ""
        lines = [wrote_text(result.requirements, f"{result.pip_packages} pip packages pinned{unpinned}")]
        lines += [wrote_text(path, f"Python {result.python_version}") for path in result.files[1:]]
        return "\n".join(lines)
    return "\n".join([
        wrote_text(result.explicit, f"{result.conda_packages} conda packages, {result.platform}"),
        wrote_text(result.environment, f"{result.pip_packages} pip packages" if result.pip_packages else None),
    ])


def adopt_text(result: Adoption) -> str:
    """``envkit stamp FILE``: what was stamped, the sidecar checked first, and whose environment the stamp records."""
    if result.already_stamped:
        return f"{result.path}: already stamped (saved_at {result.stamp.meta.get('saved_at', '?')}); left as it is"
    payload = result.stamp.payload
    lines = [f"stamped    {result.path}  ({payload.digest if payload is not None else '-'}), adopted"]
    if result.sidecar is not None:
        names = ", ".join(s.path.name for s in result.sidecar.sidecars)
        lines.append(f"  checked against its {result.sidecar.label} ({names}) first; rewritten for the stamped bytes")
    lines.append(f"  the environment that wrote it is unknown: the stamp records this one ({result.stamp.fingerprint.digest[:19]}) "
                 "marked adopted, so check and guard compare later environments with this one")
    return "\n".join(lines)


# -- envkit trial --------------------------------------------------------------------------

TRIAL_ROWS_SHOWN = 10


def trial_text(report: TrialReport) -> str:
    """A heading naming the other environment, then per checkpoint a line and what differs."""
    env = report.environment
    loader = "weights_only=False (--trust-pickles)" if report.trust_pickles else "weights_only=True"
    about = f"Python {env.get('python')}, torch {env.get('torch')}, numpy {env.get('numpy') or 'none'}" if env else "it did not answer"
    lines = [f"trial in {report.python} ({about}), torch.load {loader}:"]
    for r in report.results:
        lines.append(f"  {'ok  ' if r.ok else 'FAIL'}  {r.path}: {_trial_line(r)}")
        lines.extend(f"          {row}" for row in _trial_rows(r))
    good = sum(r.ok for r in report.results)
    lines.append(f"{good} of {len(report.results)} checkpoint{'s' if len(report.results) != 1 else ''} "
                 "load there with the same values")
    return "\n".join(lines)


def _trial_line(r: TrialResult) -> str:
    against = "the stamp's digests" if r.compared_with == "stamp" else "a load in this environment"
    if not r.loaded:
        return f"does not load there: {r.error}"
    if r.problem:
        return f"loads, but {r.problem}"
    if r.ok:
        return f"loads, same values ({_count(r.tensors, 'tensor')}, {_count(r.keys, 'other key')}, compared with {against})"
    differing, missing, added = r.counts
    parts = [f"{differing} of {r.tensors + r.keys} keys differ" if differing else "",
             f"{missing} missing" if missing else "", f"{added} added" if added else ""]
    return f"loads, but {', '.join(p for p in parts if p)} (compared with {against})"


def _trial_rows(r: TrialResult) -> list[str]:
    rows = [_difference_row(d) for d in r.differing[:TRIAL_ROWS_SHOWN]]
    rows += [f"missing: {name}" for name in r.missing[:TRIAL_ROWS_SHOWN]]
    rows += [f"added:   {name}" for name in r.added[:TRIAL_ROWS_SHOWN]]
    hidden = sum(r.counts) - len(rows)
    if hidden > 0:
        rows.append(f"... and {hidden} more (--json lists up to 1000 of each)")
    return rows


def _difference_row(d: TensorDifference) -> str:
    def show(field: str, record: object) -> str:
        value = record.value(field)  # type: ignore[attr-defined]
        if field == "bytes" and value is not None:
            return f"{value['digest']} of {value['nbytes']} bytes"
        return str(value)

    return f"{d.name}: " + "; ".join(f"{f} {show(f, d.expected)} -> {show(f, d.got)}" for f in d.fields)
