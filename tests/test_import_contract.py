"""No import cycles between the modules or the sub-packages of irepa: the import-linter contract in
pyproject.toml (``acyclic_siblings`` over the whole package, function-local imports included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import irepa

ROOT = Path(irepa.__file__).resolve().parents[2]


def test_the_import_contract_is_kept():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout
