"""The BMC inventory is reloaded when its file changes; a broken new version is rejected and
the last good one kept."""

from __future__ import annotations

import os
from pathlib import Path

from nodefence.agent.config.inventory_watch import InventoryWatcher

ONE = """nodes:
  node-1:
    levels:
      - devices:
          - {type: ipmi, address: 127.0.0.1, username: u, password_file: pw}
"""
TWO = (
    ONE
    + """  node-2:
    levels:
      - devices:
          - {type: ipmi, address: 127.0.0.2, username: u, password_file: pw}
"""
)


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_a_changed_inventory_is_reloaded_and_a_broken_one_rejected(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    path = tmp_path / "inventory.yaml"
    write(path, ONE, 1_000_000)
    rejected: list[str] = []
    watcher = InventoryWatcher(str(path), on_rejected=rejected.append)
    assert watcher.nodes() == {"node-1"}

    write(path, TWO, 1_000_010)
    assert watcher.nodes() == {"node-1", "node-2"}

    write(path, TWO.replace("type: ipmi, address: 127.0.0.2", "type: snmp, address: x"), 1_000_020)
    assert watcher.nodes() == {"node-1", "node-2"}  # the last good one is kept
    assert len(rejected) == 1 and "node 'node-2'" in rejected[0] and "field 'type'" in rejected[0]
    assert "secret" not in rejected[0]

    watcher.current()  # unchanged file: not reloaded, not reported again
    assert len(rejected) == 1

    write(path, ONE, 1_000_030)
    assert watcher.nodes() == {"node-1"} and watcher.rejected == ""


def test_a_missing_inventory_file_at_start_gives_no_nodes(tmp_path: Path) -> None:
    rejected: list[str] = []
    watcher = InventoryWatcher(str(tmp_path / "absent.yaml"), on_rejected=rejected.append)
    assert watcher.nodes() == frozenset() and "cannot read the file" in rejected[0]


def test_a_rotated_password_file_is_taken_in_without_touching_the_inventory(
    tmp_path: Path,
) -> None:
    # A Kubernetes Secret mounted as the password file is updated in place: the operator who
    # fixes a BMC password must not have to restart the leader.
    write(tmp_path / "pw", "old-password\n", 1_000_000)
    path = tmp_path / "inventory.yaml"
    write(path, ONE, 1_000_000)
    watcher = InventoryWatcher(str(path))
    first = watcher.current()
    assert first is not None and first.sources == (str(tmp_path / "pw"),)
    assert first.nodes["node-1"].devices()[0].password.reveal() == "old-password"  # type: ignore[union-attr]
    write(tmp_path / "pw", "new-password\n", 1_000_100)
    now = watcher.current()
    assert now is not None
    assert now.nodes["node-1"].devices()[0].password.reveal() == "new-password"  # type: ignore[union-attr]
    assert watcher.current() is now  # nothing changed since: not read again
