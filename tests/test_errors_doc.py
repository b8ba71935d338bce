"""docs/errors.md has a row for every error message the source raises, so the table cannot rot.

Every ``BnnError``, ``ValidationFailed``, ``EmulatorError`` and click ``BadParameter`` raised with
a literal or f-string message in the package's source is found with ``ast``; the longest fixed
piece of its text (the words between the ``{...}`` parts) must appear in docs/errors.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("plugin", "converters", "validation", "zoo", "runtime_c")
ERRORS = {"BnnError", "ValidationFailed", "EmulatorError", "BadParameter"}
DOC = ROOT / "docs" / "errors.md"
SHORTEST = 8  # pieces shorter than this ("{where}: {e}") say nothing on their own


def _pieces(node: ast.expr) -> list[str] | None:
    """The fixed text pieces of a message expression, or None if it is not literal text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _pieces(node.left), _pieces(node.right)
        if left is None and right is None:
            return None
        return (left or []) + (right or [])
    return None


def _key(pieces: list[str]) -> str | None:
    """The longest piece, as the doc writes it (tabs as \\t, newlines as spaces)."""
    cleaned = [
        p.replace("\t", "\\t").replace("\n", " ").strip(" :;,.()'\"") for p in pieces if p.strip()
    ]
    best = max(cleaned, key=len, default="")
    return best if len(best) >= SHORTEST else None


def raised_messages() -> list[tuple[str, int, str]]:
    """(file, line, key) of every error raised with literal text."""
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                func = node.func
                name = getattr(func, "id", None) or getattr(func, "attr", None)
                if name not in ERRORS:
                    continue
                pieces = _pieces(node.args[0])
                key = _key(pieces) if pieces is not None else None
                if key is not None:
                    found.append((str(path.relative_to(ROOT)), node.lineno, key))
    return found


def test_the_scan_finds_the_messages() -> None:
    messages = raised_messages()
    assert len(messages) > 300
    keys = {key for _, _, key in messages}
    assert "does not fit the" in " ".join(keys)  # generate's refusal
    assert any(file.startswith("plugin/") for file, _, _ in messages)


def test_every_message_has_a_row() -> None:
    doc = DOC.read_text(encoding="utf-8")
    missing = [f"{file}:{line}: {key!r}" for file, line, key in raised_messages() if key not in doc]
    if missing:
        pytest.fail(
            "docs/errors.md lacks a row (message | exit | cause | what to do) for:\n"
            + "\n".join(missing)
        )


def test_doc_tables_are_well_formed() -> None:
    """Every table row has the columns of its header (a stray | would shift them)."""
    columns = 0
    for number, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|"):
            columns = 0
            continue
        cells = line.count("|") - line.count("\\|")
        if columns == 0:
            columns = cells
        assert cells == columns, f"docs/errors.md:{number}: {cells - 1} columns, not {columns - 1}"


def test_readme_links_the_doc() -> None:
    assert "(docs/errors.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """click writes the choices of a missing argument on several lines; the CLI joins them."""
    from bnncube.cli import main

    assert main(["zoo", "build"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Missing argument 'NETWORK'. Choose from: mnv2_fp, mnv2_i8, hybrid" in err
