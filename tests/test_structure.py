"""The house's rules that the code alone can break: small rooms, short functions, tests that
share helpers through conftest, and one option table that every entry reads. (The floors'
import rule is import-linter's contract in pyproject.toml, run by .ci/run.)"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted((ROOT / "memtune").rglob("*.py"))


def test_no_module_over_400_lines() -> None:
    long = {
        str(f.relative_to(ROOT)): n
        for f in _modules()
        if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_over_60_lines() -> None:
    long = {}
    for f in _modules():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long[f"{f.relative_to(ROOT)}:{node.name}"] = n
    assert long == {}


def test_no_test_file_imports_another() -> None:
    """Helpers live in conftest.py (and the NVML scenarios module), never in a test file."""
    found = []
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                found.append(f"{f.name} imports {node.module}")
    assert found == []


def test_an_option_added_to_the_table_reaches_every_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One row: the CLI's flag, ``[tool.memtune]``'s key, the API's keyword (parsed by the
    row into its field) and the docstring list all come from it."""
    from memtune.app import check
    from memtune.cli import build_parser
    from memtune.core import options

    row = options.Option(
        "fail_fast",
        "stop at the first sign of trouble",
        kind="switch",
        default=False,
        toml=(bool,),
        parse=bool,
        field="force",  # an existing field: a new kind of value would add one to Options
        doc="stop at the first sign of trouble",
    )
    monkeypatch.setattr(options, "OPTIONS", (*options.OPTIONS, row))
    for command in ("suggest", "fit", "check"):
        more = ["--epochs", "1"] if command == "fit" else []
        argv = [command, "--model", "m.py:f", "--data", "d", *more, "--fail-fast"]
        assert build_parser().parse_args(argv).fail_fast is True, command
    assert options.make_options(fail_fast=True).force is True
    assert "``fail_fast`` (stop at the first sign of trouble)" in options.keywords_doc(width=200)
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.memtune]\nfail_fast = true\n")
    assert check.load_config(config) == {"fail_fast": True}
    with pytest.raises(Exception, match="unknown option 'fail_slow'"):
        options.make_options(fail_slow=True)
    assert replace(options.make_options(), force=False).force is False


def test_the_api_docstring_lists_every_keyword() -> None:
    import memtune
    from memtune.core.options import rows

    doc = " ".join((memtune.suggest.__doc__ or "").split())
    assert all(f"``{o.name}``" in doc for o in rows("plan"))
