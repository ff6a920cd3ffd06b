"""Code comments point to documents in the repository: docs/architecture.md and its sections."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def sources() -> list[Path]:
    files = [p for folder in ("envkit", "tests", "benchmarks", "examples") for p in (ROOT / folder).rglob("*.py")]
    return [*files, ROOT / "Makefile"]


def test_no_comment_cites_a_document_outside_the_repository() -> None:
    cited = [f"{p.relative_to(ROOT)}:{n}" for p in sources() if p.is_file()
             for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"DESIGN\s*§", line)]
    assert cited == []


def test_every_section_a_comment_names_is_in_docs_architecture() -> None:
    headings = {re.sub(r"^the ", "", h.strip().lower()) for h in re.findall(r"^#+ (.+)$", ARCHITECTURE.read_text(), re.MULTILINE)}
    named = []
    for path in sources():
        text = " ".join(path.read_text().split()) if path.is_file() else ""
        named += [(path.name, s) for s in re.findall(r"docs/architecture\.md, ([^)]+)\)", text)]
    assert named, "no comment points to docs/architecture.md"
    missing = [(f, s) for f, s in named if not any(h.startswith(re.sub(r"^the ", "", s.lower())) for h in headings)]
    assert missing == []
