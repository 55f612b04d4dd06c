"""The option tables of docs/operator-guide.md, rendered from the declarations.

Each table sits between `<!-- option-table NAME -->` and `<!-- /option-table -->`; the rest of
the guide is left as written. `scripts/option-tables` rewrites them, and
tests/agent/test_option_table.py fails while the guide differs from what this renders.

    python -m nodefence.agent.config.option_tables_file [--check] [docs/operator-guide.md]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nodefence.agent.config.agent_options import AGENT_OPTIONS
from nodefence.agent.config.inventory_options import INVENTORY_OPTIONS
from nodefence.agent.config.option_schema import Kind, Option

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
_BLOCK = re.compile(r"(<!-- option-table (\S+) -->\n)(.*?)(<!-- /option-table -->)", re.DOTALL)


def _table(options: Iterable[Option[Any]], section: str | None) -> tuple[Option[Any], ...]:
    """The rows of one table: every option but the sections (None), or those of one section
    (a section there: a row pointing below)."""
    if section is None:
        return tuple(o for o in options if o.kind is not Kind.SECTION)
    return tuple(o for o in options if o.section == section)


# name -> (rows, whether a row shows the whole dotted key)
TABLES: dict[str, tuple[tuple[Option[Any], ...], bool]] = {
    "agent": (_table(AGENT_OPTIONS, None), True),
    **{
        f"inventory{'.' if s else ''}{s}": (_table(INVENTORY_OPTIONS, s), False)
        for s in ("", "fencing", "node", "device", "ipmi", "redfish", "fence_agent")
    },
}


def field_cell(opt: Option[Any], whole_key: bool) -> str:
    """How a row names its option: `broker.port`, or a secret's two keys."""
    prefix = f"{opt.section}." if whole_key and opt.section else ""
    return " / ".join(f"`{prefix}{f}`" for f in opt.fields)


def render(name: str) -> str:
    """The markdown table `name`."""
    rows, whole_key = TABLES[name]
    lines = ["| Field | Default | Meaning |", "| --- | --- | --- |"]
    for opt in rows:
        meaning = opt.help.replace("|", "\\|")
        lines.append(f"| {field_cell(opt, whole_key)} | {opt.shown_default()} | {meaning} |")
    return "\n".join(lines) + "\n"


def update(text: str) -> str:
    """`text` (the guide) with every option table rendered anew; `KeyError` for an unknown
    table name."""
    return _BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def tables_in(text: str) -> list[str]:
    """The names of the option tables `text` holds, in order."""
    return [m.group(2) for m in _BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the guide's tables; with `--check`, only report (exit 1) when they are stale."""
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else GUIDE
    text = path.read_text(encoding="utf-8")
    fresh = update(text)
    if fresh == text:
        return 0
    if check:
        print(f"{path}: option tables are stale; run scripts/option-tables", file=sys.stderr)
        return 1
    path.write_text(fresh, encoding="utf-8")
    print(f"{path}: option tables rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
