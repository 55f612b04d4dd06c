"""A timeline chart of a scenario as a standalone SVG: one lane per node (power, fencing
state) and per VM (phase and node), with the scenario's events as labelled marks."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path

NODE_COLOURS = {
    "healthy": "#4caf50",
    "suspect": "#ffb300",
    "dead": "#e53935",
    "agent-lost": "#8e24aa",
    "cut off": "#6d4c41",
    "fencing": "#fb8c00",
    "powered off": "#546e7a",
    "deleted": "#cfd8dc",
    "unknown": "#bdbdbd",
}
VM_COLOURS = {
    "Running": "#43a047",
    "Starting": "#fdd835",
    "Pending": "#ffb300",
    "Migrating": "#1e88e5",
    "Stopped": "#b0bec5",
    "Stopping": "#90a4ae",
    "": "#eeeeee",
}


@dataclass
class Samples:
    """States over time: `nodes[name]` and `vms[name]` are lists of (t, state, label)."""

    nodes: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    vms: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, lane, text)

    def node(self, t: float, name: str, state: str, label: str = "") -> None:
        """Record a node's state at `t` (only changes are kept)."""
        lane = self.nodes.setdefault(name, [])
        if not lane or lane[-1][1:] != (state, label):
            lane.append((t, state, label))

    def vm(self, t: float, name: str, phase: str, where: str) -> None:
        """Record a VM's phase and node at `t` (only changes are kept)."""
        lane = self.vms.setdefault(name, [])
        if not lane or lane[-1][1:] != (phase, where):
            lane.append((t, phase, where))


def _segments(
    lane: list[tuple[float, str, str]], end: float
) -> list[tuple[float, float, str, str]]:
    out = []
    for i, (t, state, label) in enumerate(lane):
        t2 = lane[i + 1][0] if i + 1 < len(lane) else end
        out.append((t, t2, state, label))
    return out


def render_svg(samples: Samples, end: float, title: str) -> str:
    """The chart as SVG text."""
    left, width, row, top = 150, 900, 20, 50
    lanes = [("node", n, samples.nodes[n]) for n in sorted(samples.nodes)]
    lanes += [("vm", v, samples.vms[v]) for v in sorted(samples.vms, key=_natural)]
    height = top + row * len(lanes) + 70
    scale = width / max(end, 1e-6)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (kind, name, lane) in enumerate(lanes):
        y = top + i * row
        parts.append(f'<text x="10" y="{y + 14}">{escape(kind)} {escape(name)}</text>')
        colours = NODE_COLOURS if kind == "node" else VM_COLOURS
        for t1, t2, state, label in _segments(lane, end):
            x, w = left + t1 * scale, max(1.0, (t2 - t1) * scale)
            colour = colours.get(state, "#9e9e9e")
            tip = f"{name}: {state} {label} ({t1:.1f}-{t2:.1f} s)"
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" '
                f'fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
            if w > 40 and label:
                parts.append(
                    f'<text x="{x + 3:.1f}" y="{y + 14}" font-size="10">{escape(label)}</text>'
                )
    names = [name for _, name, _ in lanes]
    for t, lane_name, text in samples.marks:
        x = left + t * scale
        idx = names.index(lane_name) if lane_name in names else 0
        y = top + idx * row
        parts.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + row}" '
            f'stroke="black" stroke-width="2"><title>{escape(text)}</title></line>'
        )
    axis_y = top + row * len(lanes) + 15
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
    legend = list(NODE_COLOURS.items()) + [(f"VM {k}", v) for k, v in VM_COLOURS.items() if k]
    for i, (label, colour) in enumerate(legend):
        x = 10 + (i % 8) * 125
        y = axis_y + 32 + (i // 8) * 16
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y}">{escape(label)}</text>'
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
