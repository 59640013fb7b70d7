"""The architecture holds: core is layered and headless (import-linter contracts in .importlinter), no
import cycle hides behind function-level imports, and the `labels` commands start without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _core_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "core").rglob("*.py")
        if p.name != "__init__.py"
    )


def test_import_contracts_hold() -> None:
    """Layers (cli > services > evaluation > training | labels > detectors > runs > models > viz > data >
    config > device | workspace > errors), core never imports streamlit, core never imports views."""
    pytest.importorskip("importlinter")
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                        "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and r.stdout.count("KEPT") >= 3


def test_every_core_module_imports_without_streamlit() -> None:
    modules = _core_modules()
    assert "core.training.loop" in modules and "core.evaluation.metrics" in modules
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "assert 'streamlit' not in sys.modules, 'streamlit imported'\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def _function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.module:
                names = [inner.module]
            elif isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            else:
                continue
            # Lazy imports of third-party packages stay allowed (optional or heavy ones: scikit-image,
            # the drawable canvas, torch in the workspace's checkpoint writer so that labels start fast).
            found += [f"{path.relative_to(ROOT)}:{inner.lineno} imports {n}" for n in names if n.split(".")[0] in ("core", "views")]
    return found


def test_no_function_level_imports_between_project_modules() -> None:
    """Imports between core modules are at module level, where the layering test sees them."""
    files = sorted((ROOT / "core").rglob("*.py"))
    bad = [hit for f in files for hit in _function_level_imports(f)]
    assert not bad, "\n".join(bad)


def test_labels_commands_start_without_torch() -> None:
    code = ("import sys\nfrom core.cli.main import build_parser\nbuild_parser()\nimport core.cli.labels\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('core'))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
