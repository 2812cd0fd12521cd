#!/usr/bin/env python3
"""Refuse install files that point at one machine's disk or at a file URL.

Every requirement the install reads must be a package name with a version (``name==1.2``,
``name>=1``), resolvable from the package index on any machine. A line such as
``hivemind @ file:///tmp/...whl`` passes on the machine that froze it, where the wheel
happens to exist, and fails everywhere else; this check makes it fail everywhere, before
anything is installed.

Checked: ``constraints.txt``, every ``requirements*.txt`` at the top level, and the
dependency lists of ``pyproject.toml``. Standard library only: it runs before the install.

Usage: ``python3 scripts/check_install_files.py [ROOT]`` (default: the repository root);
exit status 0 when clean, 1 with one line per offending requirement otherwise.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# A requirement: a distribution name, optional extras, an optional version specifier list,
# an optional environment marker. Anything else (a URL, a path, an option) is refused.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_EXTRAS = r"(?:\[\s*" + _NAME + r"(?:\s*,\s*" + _NAME + r")*\s*\])?"
_VERSION = r"(?:===?|~=|!=|<=?|>=?)\s*[A-Za-z0-9.*+!_-]+"
_SPEC = r"(?:\s*" + _VERSION + r"(?:\s*,\s*" + _VERSION + r")*)?"
_MARKER = r"(?:\s*;[^@]*)?"
REQUIREMENT = re.compile(r"^" + _NAME + _EXTRAS + _SPEC + _MARKER + r"$")


def problem(requirement: str) -> str | None:
    """Why ``requirement`` is not a plain name-and-version requirement, or None if it is."""
    text = requirement.strip()
    lowered = text.lower()
    if "file:" in lowered:
        return "refers to a file URL"
    if "://" in text or " @ " in text or text.startswith("@"):
        return "is a direct URL reference, not a package name and version"
    if text.startswith(("/", "./", "../", "~")) or re.match(r"^[A-Za-z]:[\\/]", text) or "/" in text.split(";")[0]:
        return "is a path on some machine's disk"
    if text.startswith("-"):
        return "is a pip option (an index, find-links, editable or nested file), not a requirement"
    if not REQUIREMENT.match(text):
        return "is not of the form 'name==version' (or another version specifier)"
    return None


def requirement_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, requirement) for every non-comment line of a requirements-style file."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split(" #", 1)[0].strip()
        if text and not text.startswith("#"):
            out.append((number, text))
    return out


def pyproject_requirements(path: Path) -> list[tuple[str, str]]:
    """(where, requirement) for the project's dependencies and optional dependencies."""
    project = tomllib.loads(path.read_text()).get("project", {})
    out = [("dependencies", r) for r in project.get("dependencies", [])]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        out += [(f"optional-dependencies.{extra}", r) for r in requirements]
    return out


def check(root: Path) -> list[str]:
    """Every offending requirement under ``root``, as 'file:where: requirement — why'."""
    errors = []
    files = [root / "constraints.txt", *sorted(root.glob("requirements*.txt"))]
    for path in files:
        if not path.exists():
            continue
        for number, text in requirement_lines(path):
            why = problem(text)
            if why:
                errors.append(f"{path.name}:{number}: {text!r} {why}")
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        for where, text in pyproject_requirements(pyproject):
            why = problem(text)
            if why:
                errors.append(f"pyproject.toml [{where}]: {text!r} {why}")
    return errors


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    errors = check(root)
    if errors:
        print("install files must name packages by name and version only:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        print("regenerate constraints.txt with `make lock` instead of editing it by hand.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
