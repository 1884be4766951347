"""The layout of DESIGN.md holds: import-linter's contracts in pyproject.toml are all kept.

The contracts count function-level imports too, so a lazy import cannot hide an upward arrow.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb  # import contracts: no database; the PostgreSQL pass skips it

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--no-cache"], check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The linter really checks: in a copy of the tree, an upward import (the ground reaching
    the roof) breaks the layers contract."""
    import shutil

    packages = ["renkei", "portal", "idp", "discovery", "consent", "access_history", "federation",
                "pseudonym", "renkei_provider", "kernel", "relay"]
    for name in packages:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples" / "agency_demo", tmp_path / "agency_demo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "kernel" / "_layout_probe.py").write_text("import renkei.cli  # an arrow pointing up\n")
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--no-cache", "--contract", "layers"], check=False,
                            cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0, result.stdout[-2000:]
    assert "kernel._layout_probe" in result.stdout
