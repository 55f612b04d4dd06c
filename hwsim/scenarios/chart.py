"""A timeline chart of a scenario as a standalone SVG.

Lanes, top to bottom: the leader (who holds the Lease; a gap is drawn as "no leader"); the
cluster (fencing paused, cluster-wide alerts); per node two lanes, its physical power (on, off,
cut off from the network) and nodefence's verdict (healthy, suspect, dead, fencing, fence
failed, proven off, deleted, maintenance), so that "dead" never seems to follow "fencing" on one
lane; per VM its phase and node, drawn as down while it still says Running on a host that is
off or cut off. Milestones (the failure, declared dead, proven off, deleted, recovered, a new
leader, alerts) are labelled lines across every lane, with their time after the failure. The
legend names only what the chart shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path

POWER_COLOURS = {"on": "#81c784", "off": "#37474f", "cut off": "#6d4c41"}
VERDICT_COLOURS = {
    "healthy": "#4caf50",
    "suspect": "#ffb300",
    "dead": "#e53935",
    "agent-lost": "#8e24aa",
    "fencing": "#fb8c00",
    "fence failed": "#b71c1c",
    "proven off": "#546e7a",
    "deleted": "#cfd8dc",
    "maintenance": "#0288d1",
    "unknown": "#bdbdbd",
}
VM_COLOURS = {
    "Running": "#43a047",
    "down (host off)": "#c62828",
    "down (host cut off)": "#ef6c00",
    "Starting": "#fdd835",
    "Pending": "#ffb300",
    "Migrating": "#1e88e5",
    "Stopped": "#b0bec5",
    "Stopping": "#90a4ae",
    "": "#eeeeee",
}
LEADER_COLOURS = {"no leader": "#e53935"}
CLUSTER_COLOURS = {"fencing paused": "#fdd835", "": "#ffffff"}
LANE_COLOURS = {
    "power": POWER_COLOURS,
    "verdict": VERDICT_COLOURS,
    "vm": VM_COLOURS,
    "leader": LEADER_COLOURS,
    "cluster": CLUSTER_COLOURS,
}
Lane = list[tuple[float, str, str]]  # (t, state, label)


@dataclass
class Samples:
    """States over time, per lane; marks (small, with a tooltip) and milestones (labelled)."""

    power: dict[str, Lane] = field(default_factory=dict)
    verdict: dict[str, Lane] = field(default_factory=dict)
    vms: dict[str, Lane] = field(default_factory=dict)
    leader: Lane = field(default_factory=list)
    cluster: Lane = field(default_factory=list)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, lane, text)
    milestones: list[tuple[float, str, str]] = field(default_factory=list)
    failure_at: float | None = None  # durations of later milestones count from here

    @staticmethod
    def _add(lane: Lane, t: float, state: str, label: str) -> None:
        if not lane or lane[-1][1:] != (state, label):
            lane.append((t, state, label))

    def node(self, t: float, name: str, power: str, verdict: str) -> None:
        """A node's power and nodefence's verdict at `t` (only changes are kept)."""
        self._add(self.power.setdefault(name, []), t, power, "")
        self._add(self.verdict.setdefault(name, []), t, verdict, "")

    def vm(self, t: float, name: str, phase: str, where: str) -> None:
        """A VM's phase and node at `t` (only changes are kept)."""
        self._add(self.vms.setdefault(name, []), t, phase, where)

    def holder(self, t: float, node: str | None) -> None:
        """Who holds the leader Lease at `t` (None: nobody)."""
        self._add(self.leader, t, node or "no leader", node or "no leader")

    def paused(self, t: float, reason: str | None) -> None:
        """Fencing paused cluster-wide at `t` (None: not paused)."""
        self._add(self.cluster, t, "fencing paused" if reason else "", reason or "")

    def milestone(self, t: float, lane: str, text: str) -> None:
        """A labelled moment (`lane`: the node it is about, "-" for the whole cluster)."""
        if text.startswith("failure"):
            self.failure_at = t
        self.milestones.append((t, lane, text))


def vm_state(phase: str, host_power: str) -> str:
    """What a VM's lane shows: its phase, except "down (host off)" or "down (host cut off)"
    while it still says Running on a host without power or network (the API cannot know)."""
    if phase == "Running" and host_power != "on":
        return f"down (host {host_power})"
    return phase


def _segments(lane: Lane, end: float) -> list[tuple[float, float, str, str]]:
    return [
        (t, lane[i + 1][0] if i + 1 < len(lane) else end, state, label)
        for i, (t, state, label) in enumerate(lane)
    ]


def _lanes(samples: Samples) -> list[tuple[str, str, Lane]]:
    """(kind, title, lane) in drawing order."""
    lanes: list[tuple[str, str, Lane]] = [("leader", "leader", samples.leader)]
    alerts = any(lane == "cluster" for _, lane, _ in samples.marks)
    if alerts or any(state for _, state, _ in samples.cluster):
        lanes.append(("cluster", "cluster", samples.cluster))
    for name in sorted(set(samples.power) | set(samples.verdict), key=_natural):
        lanes.append(("power", f"{name} power", samples.power.get(name, [])))
        lanes.append(("verdict", f"{name} nodefence", samples.verdict.get(name, [])))
    lanes += [("vm", f"vm {v}", samples.vms[v]) for v in sorted(samples.vms, key=_natural)]
    return lanes


def render_svg(samples: Samples, end: float, title: str) -> str:
    """The chart as SVG text."""
    left, width, row, top = 170, 900, 18, 40
    lanes = _lanes(samples)
    shown_milestones = sorted(samples.milestones)
    label_rows = min(6, max(1, len(shown_milestones)))
    plot_top = top + 14 * label_rows + 6
    height = plot_top + row * len(lanes) + 110
    scale = width / max(end, 1e-6)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 160}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    used: dict[str, str] = {}
    titles = [name for _, name, _ in lanes]
    for i, (kind, name, lane) in enumerate(lanes):
        y = plot_top + i * row
        parts.append(f'<text x="10" y="{y + 13}">{escape(name)}</text>')
        colours = LANE_COLOURS[kind]
        for t1, t2, state, label in _segments(lane, end):
            if kind == "cluster" and not state:
                continue
            x, w = left + t1 * scale, max(1.0, (t2 - t1) * scale)
            colour = colours.get(state, "#9e9e9e" if kind != "leader" else "#90caf9")
            shown = label if kind in ("leader", "vm") else state
            if kind in ("leader",) and state != "no leader":
                used.setdefault("leader", "#90caf9")
            else:
                used.setdefault(f"VM {state}" if kind == "vm" else state, colour)
            said = state if label in ("", state) else f"{state} {label}"
            tip = f"{name}: {said} ({t1:.1f}-{t2:.1f} s)"
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" '
                f'fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
            if w > 6 * len(shown) and shown:
                parts.append(
                    f'<text x="{x + 3:.1f}" y="{y + 12}" font-size="9">{escape(shown)}</text>'
                )
    for t, lane_name, text in samples.marks:
        fallback = titles.index("cluster") if "cluster" in titles else 0
        idx = titles.index(lane_name) if lane_name in titles else fallback
        x, y = left + t * scale, plot_top + idx * row
        parts.append(
            f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + row - 1}" '
            f'stroke="black" stroke-width="1.5"><title>{escape(text)}</title></line>'
        )
    bottom = plot_top + row * len(lanes)
    for n, (t, _, text) in enumerate(shown_milestones):
        x = left + t * scale
        after = samples.failure_at
        said = (
            text
            if after is None or t <= after or text.startswith("failure")
            else (f"{text} +{t - after:.1f}s")
        )
        y = top + 14 * (n % label_rows) + 10
        parts.append(
            f'<line x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{bottom}" stroke="#333" '
            f'stroke-dasharray="3,3" stroke-width="1"/>'
            f'<text x="{x + 2:.1f}" y="{y}" font-size="10">{escape(said)}</text>'
        )
    axis_y = bottom + 15
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#333"/>'
    )
    step = max(1, round(end / 10))
    for s in range(0, int(end) + 1, step):
        x = left + s * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#333"/>'
        )
        parts.append(f'<text x="{x - 6:.1f}" y="{axis_y + 18}">{s}s</text>')
    for i, (label, colour) in enumerate(sorted(used.items())):
        x = 10 + (i % 7) * 150
        y = axis_y + 34 + (i // 7) * 16
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y}">{escape(label or "-")}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else 0


def write_svg(samples: Samples, end: float, title: str, path: Path) -> Path:
    """Render and write the chart; returns `path`."""
    path.write_text(render_svg(samples, end, title), encoding="utf-8")
    return path
