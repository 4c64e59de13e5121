"""What a user installing the pack expects: the license, `python -m deepgen_core`, and Comfy Registry metadata that
ships the node pack (with the embedded model) and leaves tests and benchmarks out."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepgen_core", *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_license_is_the_apache_text_the_metadata_names():
    assert PYPROJECT["project"]["license"] == {"file": "LICENSE"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_python_m_deepgen_core_is_the_deepgen_command():
    assert PYPROJECT["project"]["scripts"]["deepgen"] == "deepgen_core.cli:main"
    done = _run_module("generate", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: deepgen generate") and "--prompt" in done.stdout
    wrong = _run_module("paint")
    assert wrong.returncode == 2 and "invalid choice: 'paint'" in wrong.stderr


def test_comfy_registry_metadata_is_complete():
    comfy = PYPROJECT["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "includes", "requires-comfyui"} <= comfy.keys()
    assert PYPROJECT["project"]["urls"]["Repository"].startswith("https://")
    assert comfy["Icon"].startswith("https://") and (REPO / "docs/images" / comfy["Icon"].rsplit("/", 1)[1]).is_file()
    for path in comfy["includes"]:
        assert (REPO / path).is_dir(), path
    # The release the V3 node API was tested on, and today's, are both admitted.
    assert {"0.3.64", "0.38.0"} <= set(SpecifierSet(comfy["requires-comfyui"]).filter(["0.3.63", "0.3.64", "0.38.0"]))
    assert "0.3.63" not in SpecifierSet(comfy["requires-comfyui"])


def test_comfyignore_keeps_tests_and_benchmarks_out_of_the_node_archive():
    patterns = {line.strip() for line in (REPO / ".comfyignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {"tests/", "benchmarks/"} <= patterns  # tests/ holds the reference fixtures too
    shipped = ("__init__.py", "nodes/", "deepgen_core/", "workflows/", "pyproject.toml", "LICENSE", "README.md")
    assert not [p for p in patterns for s in shipped if s.startswith(p.rstrip("*")) or p.startswith(s.rstrip("/"))], patterns
