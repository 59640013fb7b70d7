"""core/ stays headless: importing every core module never imports streamlit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_core_module_imports_streamlit() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "core").rglob("*.py")
        if p.name != "__init__.py"
    )
    assert "core.train" in modules and "core.metrics" in modules
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "assert 'streamlit' not in sys.modules, 'streamlit imported'\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
