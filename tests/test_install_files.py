"""The install must work on any machine: no machine-local paths, every direct import declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_install_files.py"
BAD_LINES = [
    "hivemind @ file:///tmp/hm/hivemind-1.1.12-py3-none-manylinux2014_x86_64.whl#sha256=ab",
    "torch @ https://example.org/torch-2.13.0.whl",
    "/opt/wheels/foo-1.0-py3-none-any.whl",
    "./vendor/bar",
    "-e /home/someone/project",
    "--find-links /opt/wheels",
    "-f file:///opt/wheels",
    "C:\\wheels\\baz-1.0.whl",
]


def run_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True, timeout=30)


def test_repository_install_files_are_clean():
    out = run_check(ROOT)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("line", BAD_LINES)
def test_constraints_with_a_local_path_or_url_are_refused(tmp_path, line):
    (tmp_path / "constraints.txt").write_text(f"# header\nnumpy==2.4.6\n{line}\nscipy==1.17.1\n")
    out = run_check(tmp_path)
    assert out.returncode == 1
    assert "constraints.txt:3:" in out.stderr
    assert "make lock" in out.stderr


def test_pyproject_and_requirements_files_are_checked_too(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["numpy>=1.26", "foo @ file:///tmp/foo.whl"]\n'
        '[project.optional-dependencies]\ndev = ["bar @ https://example.org/bar.whl"]\n'
    )
    (tmp_path / "requirements-dev.txt").write_text("pytest==9.2.0\n/abs/path/pkg.whl\n")
    out = run_check(tmp_path)
    assert out.returncode == 1
    assert "pyproject.toml [dependencies]: 'foo @ file:///tmp/foo.whl'" in out.stderr
    assert "[optional-dependencies.dev]" in out.stderr
    assert "requirements-dev.txt:2:" in out.stderr


def test_plain_requirements_pass(tmp_path):
    lines = ["numpy==2.4.6", "torch>=2.4", "pkg[extra]==1.0 ; python_version >= '3.11'", "a-b.c_d~=1.2", "x!=2,<3"]
    (tmp_path / "constraints.txt").write_text("\n".join(lines) + "\n")
    out = run_check(tmp_path)
    assert out.returncode == 0, out.stderr


def test_constraints_header_says_how_it_was_made():
    header = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("#")]
    assert any("make lock" in line for line in header)


def _third_party_imports() -> set[str]:
    """Top-level module names that swarmnode's own code imports, outside the standard library."""
    names = set()
    for path in (ROOT / "swarmnode").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "swarmnode"}


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalize(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_direct_import_is_a_declared_dependency():
    owners = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    undeclared = {}
    for module in sorted(_third_party_imports()):
        distributions = {_normalize(d) for d in owners.get(module, [])}
        assert distributions, f"{module} is imported by swarmnode but no installed distribution provides it"
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported by swarmnode but not declared in pyproject.toml: {undeclared}"
