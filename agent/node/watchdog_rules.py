"""Self-fencing: the node feeds a watchdog device while it is in contact, and the leader's rule
for when a node that could not be powered off may be taken as reset by its watchdog.

Node side. The agent feeds the device (one byte per `feed_interval`) only while
- it had *contact* within `cut_off_after`: a heartbeat of its own came back through the broker
  (stamped with the moment it was sent), or a read of the API server showed no fencing record
  for this node (stamped with the moment the read started), and
- it has never seen a fencing record for itself (the leader decided to fence it).
Both rules latch: once the agent stops feeding it never feeds again, so the watchdog resets the
machine within its `timeout`. A clean stop (SIGTERM) writes the magic 'V' so a rolling update
does not reboot the node. The first feed (which arms the device) waits for the first contact.

Maintenance. A node whose Node carries `nodefence.io/maintenance=true` (read from the API with
the records) is never fenced, and its network work must not reset it. From that read on its
heartbeats advertise no armed watchdog; once one of them came back through the broker (so the
leader has it too, by the argument below) the cut-off rule no longer applies, and the node feeds
without contact until a read shows the mark gone (that read is also contact). A fencing record
still stops feeding. The leader never counts a watchdog proof for a node whose last heartbeat
advertised no armed watchdog, nor for a node it sees in maintenance.

Leader side (`self_fence_verdict`, pure). Let M be the moment the leader stored the fencing
record (for a resumed operation: the moment this leader took it over). Any contact the node
stamps at or after M shows it the record (API reads), or reaches the leader as a heartbeat
(broker round trips; the leader's own broker connection must have been up all along and no
message on the node's topic refused since its last accepted heartbeat). So without a
heartbeat or kubelet renewal seen after M, the node's last contact is before M, it stopped
feeding by M + cut_off + feed_interval, and was reset by that + timeout. The leader takes the
node as fenced only after that deadline plus a margin, only when every BMC device of the node
was unreachable in the last power walk, and only when the node's last heartbeat said its
watchdog was armed (its `WatchdogClaim`).

The I/O lives apart: `nodefence.agent.node.watchdog_loop` writes the device,
`nodefence.agent.node.marks_watch` reads the node's fencing records and maintenance mark from the
API.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodefence.agent.heartbeat.codec import WatchdogClaim

# -- node side: when to feed (pure) ------------------------------------------------------------


@dataclass
class FeedPolicy:
    """Whether to feed now; `contact()` and `fenced()` fold in what the agent learns."""

    cut_off: float
    last_contact: float | None = None
    stopped: str = ""  # why feeding stopped for good ("" while feeding is allowed)
    withdrawn_at: float | None = None  # the maintenance mark was read: the claim withdrawn
    exempt: bool = False  # the leader has a heartbeat without the claim: no cut-off

    def contact(self, at: float) -> None:
        """A round trip that started at `at` (monotonic) succeeded and showed no fencing."""
        if self.last_contact is None or at > self.last_contact:
            self.last_contact = at

    def echo(self, sent_at: float) -> None:
        """One of this node's heartbeats, sent at `sent_at`, came back through the broker.

        Contact; and, once the claim was withdrawn before it was sent (heartbeats stamp
        their send time before asking for the claim), proof that the leader received a
        heartbeat without the claim: the cut-off no longer applies."""
        self.contact(sent_at)
        if self.withdrawn_at is not None and sent_at >= self.withdrawn_at:
            self.exempt = True

    def maintenance(self, marked: bool, now: float) -> None:
        """What a read of this node's Node said about `nodefence.io/maintenance=true`, at
        `now` (after the read)."""
        if marked:
            if self.withdrawn_at is None:
                self.withdrawn_at = now
            return
        self.withdrawn_at = None
        self.exempt = False

    @property
    def claim_withdrawn(self) -> bool:
        """Heartbeats must not advertise an armed watchdog (the node is in maintenance)."""
        return self.withdrawn_at is not None

    def fenced(self, why: str) -> None:
        """The agent learnt the leader is fencing this node: stop feeding for good."""
        if not self.stopped:
            self.stopped = f"fencing record seen: {why}"

    def should_feed(self, now: float) -> bool:
        """Feed now? Latches to False once cut off (or fenced)."""
        if self.stopped:
            return False
        if self.last_contact is None:
            return False  # not armed yet: the first contact arms the device
        if self.exempt:
            return True  # in maintenance, and the leader knows the claim is withdrawn
        silent = now - self.last_contact
        if silent > self.cut_off:
            self.stopped = f"no broker or API server contact for {silent:.1f} s"
            return False
        return True


def clean_stop_disarms(policy: FeedPolicy, now: float, announced: bool) -> bool:
    """May a clean stop disarm the watchdog? Only while the node is still in contact and has
    seen no fencing record of its own (a cut-off node must reset even if its agent stops), and
    once its `stopped` status was acknowledged (so the leader knows the claim is void)."""
    return announced and policy.should_feed(now)


# -- leader side: may a self-fence count as proof? (pure) --------------------------------------


@dataclass(frozen=True)
class SelfFenceFacts:
    """What the leader knows about a node it could not power off (leader monotonic clock)."""

    now: float
    marked_at: float  # the fencing record was stored (or taken over) by this leader
    decided_at: float  # this leader declared the node dead
    max_claim_age: float  # the armed heartbeat may be at most this much older than decided_at
    frozen: bool  # a leader-wide guard (storm, broker down, new leader) holds decisions
    margin: float
    claim: WatchdogClaim | None  # from the node's last accepted heartbeat
    last_heartbeat: float | None
    last_rejected: float | None  # last refused message on the node's heartbeat topic
    broker_up_since: float | None  # the leader's ingest connection, None while down
    alive_after_mark: str | None  # evidence of life after marked_at (heartbeat, kubelet)
    bmc_unreachable: bool  # every device of the node unreachable in the last power walk
    in_maintenance: bool = False  # the leader sees the node marked for maintenance


def self_fence_deadline(claim: WatchdogClaim, marked_at: float, margin: float) -> float:
    """When the node has provably been reset by its watchdog (leader clock)."""
    return marked_at + claim.cut_off + claim.feed_interval + claim.timeout + margin


def self_fence_verdict(f: SelfFenceFacts) -> tuple[bool, str]:
    """(True, why) when the node may be treated as fenced; (False, what is missing)."""
    if not f.bmc_unreachable:
        return False, "its BMC answered (only an unreachable BMC allows a self-fence)"
    if f.frozen:
        return False, "decisions are frozen (storm guard, broker down or new leader)"
    if f.in_maintenance:
        return False, "it is in maintenance: its agent may feed its watchdog without contact"
    if f.claim is None or f.last_heartbeat is None:
        return False, "its last heartbeat did not report an armed watchdog"
    if f.decided_at - f.last_heartbeat > f.max_claim_age:
        return False, (
            f"its last armed heartbeat came {f.decided_at - f.last_heartbeat:.1f} s before the"
            f" fence decision (at most {f.max_claim_age:g} s): it may have been disarmed since"
        )
    if f.alive_after_mark:
        return False, f"it showed life after the fence decision ({f.alive_after_mark})"
    if f.broker_up_since is None or f.broker_up_since > f.last_heartbeat:
        return False, "the leader's broker connection was not up since the node's last heartbeat"
    if f.last_rejected is not None and f.last_rejected >= f.last_heartbeat:
        return False, "messages on its heartbeat topic were refused since its last heartbeat"
    deadline = self_fence_deadline(f.claim, f.marked_at, f.margin)
    if f.now < deadline:
        return False, f"its watchdog deadline is {deadline - f.now:.1f} s away"
    c = f.claim
    return True, (
        f"watchdog self-fence: no contact since the fence decision; cut_off {c.cut_off:g} s"
        f" + feed {c.feed_interval:g} s + watchdog timeout {c.timeout:g} s"
        f" + margin {f.margin:g} s have passed"
    )
