"""agent/'s naming rule: a module that does I/O says so in its name (architecture.md, section 0)."""

from __future__ import annotations

import ast

from tests.conftest import REPO

IO_WORDS = ("client", "server", "loop", "executor", "watch", "runner", "file", "files")
IO_MODULES = {"asyncio", "socket", "subprocess", "aiomqtt", "kubernetes", "aiohttp", "ssl"}
IO_MODULES |= {"threading", "signal", "select", "selectors", "urllib", "http"}


def does_io(tree: ast.Module) -> list[str]:
    """Why a module looks like it does I/O: what it imports, awaits or opens."""
    why = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            why += [a.name for a in node.names if a.name.split(".")[0] in IO_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            why += [node.module] if node.module.split(".")[0] in IO_MODULES else []
        elif isinstance(node, ast.AsyncFunctionDef | ast.Await):
            why.append("async")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "open"
        ):
            why.append("open()")
    return sorted(set(why))


def io_named(stem: str) -> bool:
    return stem in IO_WORDS or stem.endswith(tuple(f"_{w}" for w in IO_WORDS))


def test_a_module_that_does_io_is_named_for_it() -> None:
    wrong = []
    for path in sorted((REPO / "agent").glob("*/*.py")):
        if path.parent.name == "cli" or path.stem == "__init__":
            continue  # cli/ holds commands: I/O by nature
        why = does_io(ast.parse(path.read_text()))
        if why and not io_named(path.stem):
            wrong.append(f"{path.relative_to(REPO)}: {', '.join(why)}")
    assert wrong == []


def test_every_folder_of_agent_says_what_it_holds() -> None:
    folders = [p for p in (REPO / "agent").iterdir() if p.is_dir() and p.name != "__pycache__"]
    for folder in sorted(folders):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) == 1, folder
