"""The code, its help texts and the docs cite the repository's own docs or the paper, never files outside it;
every module and recipe opens by saying what it is for."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO

CHECKED = ("qrag_core", "qrag_integrations", "examples", "docs", "recipes", "benchmarks", "README.md")
OUTSIDE_REFERENCE = re.compile(r"\bSPEC\b|\b[Ii]ssue \d+")


def test_no_text_refers_to_the_specification_or_to_issue_numbers() -> None:
    files = [REPO / name for name in CHECKED if (REPO / name).is_file()]
    files += [p for name in CHECKED if (REPO / name).is_dir() for p in (REPO / name).rglob("*")]
    offending = []
    for path in files:
        if path.suffix not in {".py", ".md", ".sh", ".txt"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE_REFERENCE.search(line):
                offending.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert not offending, "\n".join(offending)


MODULE_FOLDERS = ("qrag_core", "qrag_integrations", "benchmarks", "recipes")


def test_every_module_and_recipe_opens_with_what_it_is_for() -> None:
    undocumented = []
    for folder in MODULE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            if not docstring or len(docstring.split("\n")[0].split()) < 5:
                undocumented.append(str(path.relative_to(REPO)))
        for path in sorted((REPO / folder).rglob("*.sh")):
            header = path.read_text(encoding="utf-8").splitlines()[1:2]
            if not header or not header[0].startswith("# ") or len(header[0].split()) < 6:
                undocumented.append(str(path.relative_to(REPO)))
    assert not undocumented, f"modules that do not open with what they are for: {undocumented}"
