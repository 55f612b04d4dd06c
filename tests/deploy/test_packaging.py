"""The install layout: every package under `nodefence.`, no import of the bare folder names."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ("agent", "backends", "hwsim")


def package_folders() -> set[str]:
    return {
        "nodefence." + ".".join(init.parent.relative_to(REPO).parts)
        for folder in FOLDERS
        for init in (REPO / folder).rglob("__init__.py")
    }


def test_every_package_folder_is_installed_under_nodefence() -> None:
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setup["packages"]) == package_folders() | {"nodefence"}
    assert setup["package-dir"] == {
        "nodefence": "nodefence",
        **{f"nodefence.{f}": f for f in FOLDERS},
    }


def test_the_checkout_links_each_folder_under_nodefence() -> None:
    for folder in FOLDERS:
        link = REPO / "nodefence" / folder
        assert link.is_symlink() and link.resolve() == (REPO / folder).resolve()


def bare_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [
            f"{path.relative_to(REPO)}:{node.lineno}: {n}"
            for n in names
            if n.split(".")[0] in FOLDERS
        ]
    return found


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """`import agent.x` works in a checkout but not installed: it must say `nodefence.agent.x`."""
    files = [p for d in (*FOLDERS, "tests", "bench") for p in (REPO / d).rglob("*.py")]
    assert [line for p in files for line in bare_imports(p)] == []


@pytest.mark.timeout(180)
def test_the_wheel_holds_every_module_under_nodefence(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=170,
    )
    (wheel,) = tmp_path.glob("nodefence-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        "nodefence/" + str(p.relative_to(REPO))
        for folder in FOLDERS
        for p in (REPO / folder).rglob("*.py")
    }
    assert sources <= names
    assert not any(n.split("/")[0] in FOLDERS for n in names)
