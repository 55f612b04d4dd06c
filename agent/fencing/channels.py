"""Which channels must agree before a power-off counts as proven (pure; names in, names out).

A node's devices are channels to its power. Some are views of the same power (the IPMI and the
Redfish interface of one BMC both read the host), others are not (a PDU outlet keeps its power
when the BMC switched the host off). Channel groups say which is which: after a level proves Off
through its devices, every other device that shares a group with one of them must read Off too;
a device in no shared group is not cross-checked. `channel_errors` says what a channel that
answers with an error means for that cross-check. `nodefence.agent.fencing.power_executor` applies
the rule.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from nodefence.agent.brief import brief

Groups = tuple[frozenset[str], ...]

GROUPS_FORMAT = "true, false, or a list of groups, each a list of device names of this node"


class ChannelErrors(enum.Enum):
    """What a cross-checked channel that answers with an error (not Off) means."""

    # It answered, so it cannot be skipped: it must read Off within its power_timeout.
    NOT_PROVEN = "not-proven"
    # Skipped like a channel that does not answer at all (a BMC known to be broken).
    IGNORE = "ignore"


def parse_groups(value: object, devices: Sequence[str]) -> Groups:
    """The groups a `verify_all_channels` value means for a node with `devices`.

    `True`: one group of every device; `False`: no group (no cross-check); a list of groups:
    as given, where every device of the node is in exactly one group (alone, it is not
    cross-checked). Raise `ValueError` saying what is wrong, in the inventory's words.
    """
    if value is True:
        return (frozenset(devices),)
    if value is False:
        return ()
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be {GROUPS_FORMAT}, got {brief(value)}")
    known = set(devices)
    seen: dict[str, int] = {}
    groups: list[frozenset[str]] = []
    for gi, group in enumerate(value, start=1):
        if not isinstance(group, list) or not group:
            raise ValueError(
                f"group {gi} must be a non-empty list of device names, got {brief(group)}"
            )
        for name in group:
            if not isinstance(name, str) or name not in known:
                raise ValueError(
                    f"group {gi}: {brief(name)} is not a device of this node "
                    f"(its devices: {_listing(devices)})"
                )
            if name in seen:
                where = "twice in it" if seen[name] == gi else f"also in group {seen[name]}"
                raise ValueError(f"group {gi}: device {name!r} is {where}; list it once")
            seen[name] = gi
        groups.append(frozenset(group))
    missing = [d for d in devices if d not in seen]
    if missing:
        raise ValueError(
            f"device {missing[0]!r} is in no group; list every device of the node "
            f"(a device alone in its group, [{missing[0]}], is not cross-checked)"
        )
    return tuple(groups)


def _listing(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def cross_checked(groups: Groups, proven_by: Iterable[str]) -> frozenset[str]:
    """The devices that must also read Off after `proven_by` (a level's devices) read Off."""
    proven = frozenset(proven_by)
    sharing = [g for g in groups if g & proven]
    return frozenset().union(*sharing) - proven
