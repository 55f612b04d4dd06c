"""A VM's `spec.liveMigrationPolicy` and an operation's `spec.force`, as Deckhouse decides them
(`livemigration.CalculateEffectivePolicy`). Pure.

The CRD's values: `AlwaysSafe` (never CPU throttling), `PreferSafe` (the default: none unless
the operation says `force: true`), `AlwaysForced` (always), `PreferForced` (unless the operation
says `force: false`). Forcing against an Always* policy makes the operation invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

POLICIES = ("AlwaysSafe", "PreferSafe", "AlwaysForced", "PreferForced")
DEFAULT_POLICY = "PreferSafe"


def live_migration_settings(vm_spec: Mapping[str, Any], force: Any) -> tuple[str, bool] | str:
    """(effective policy, auto-converge) for a VM's spec and an operation's `spec.force`
    (None when unset); a string says why the operation is invalid."""
    policy = str(vm_spec.get("liveMigrationPolicy") or DEFAULT_POLICY)
    if policy not in POLICIES:
        return f"liveMigrationPolicy {policy!r} is not one of {', '.join(POLICIES)}"
    auto = policy in ("AlwaysForced", "PreferForced")
    if isinstance(force, bool):
        if policy == "AlwaysSafe" and force:
            return f"force=true is not applicable for VM liveMigrationPolicy {policy}"
        if policy == "AlwaysForced" and not force:
            return f"force=false is not applicable for VM liveMigrationPolicy {policy}"
        if policy.startswith("Prefer"):
            auto = force
    return policy, auto
