"""The leader's outstanding probe requests, and which answers to them it believes. Pure.

The leader registers each request as it sends it (`asked`). A result is admitted (`admit`)
only when it answers a request the leader sent (else UNKNOWN_REQUEST), is about that
request's suspect (WRONG_SUSPECT), comes from a peer the request named (NOT_ASKED), is that
peer's first answer to it (REPLAYED) and arrives within `lifetime` of the request (LATE).
A request is remembered `remember` seconds past its lifetime, so a late answer is told apart
from an invented id, and at most `limit` requests are kept (the oldest go first): the memory
is bounded whatever arrives. The signature is checked before (`nodefence.agent.probes.signing`), so
a forged result never uses up a peer's one answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodefence.agent.probes.peers import ProbeRequest, ProbeResult
from nodefence.agent.probes.signing import ProbeRejected, ProbeRejectReason


@dataclass
class _Asked:
    request: ProbeRequest
    asked_at: float
    answered: set[str] = field(default_factory=set)


class OutstandingProbes:
    """Requests sent and not yet forgotten, keyed by id; times are the leader's monotonic clock."""

    def __init__(self, lifetime: float, *, remember: float | None = None, limit: int = 4096):
        if lifetime <= 0 or limit < 1:
            raise ValueError(f"lifetime must be > 0 s and limit >= 1, got {lifetime}, {limit}")
        self.lifetime = lifetime
        self.remember = 10 * lifetime if remember is None else remember
        self.limit = limit
        self._asked: dict[str, _Asked] = {}  # in the order asked: the oldest first

    def asked(self, req: ProbeRequest, now: float) -> None:
        """Remember that `req` was sent at `now`."""
        self._forget_before(now)
        self._asked.pop(req.id, None)  # ids are unique; a reused one starts over, at the end
        self._asked[req.id] = _Asked(req, now)
        while len(self._asked) > self.limit:
            del self._asked[next(iter(self._asked))]

    def admit(self, res: ProbeResult, now: float) -> float:
        """When the request `res` answers was sent; or raise `ProbeRejected` and change
        nothing. Each (request, peer) is admitted at most once."""
        self._forget_before(now)
        entry = self._asked.get(res.id)
        if entry is None:
            raise ProbeRejected(
                ProbeRejectReason.UNKNOWN_REQUEST,
                f"result of {res.peer} answers no request this leader sent ({res.id!r})",
            )
        req = entry.request
        if res.suspect != req.suspect:
            raise ProbeRejected(
                ProbeRejectReason.WRONG_SUSPECT,
                f"result of {res.peer} names {res.suspect}, request {req.id} was about"
                f" {req.suspect}",
            )
        if res.peer not in req.peers:
            raise ProbeRejected(
                ProbeRejectReason.NOT_ASKED,
                f"{res.peer} was not asked to probe {req.suspect} (request {req.id})",
            )
        if res.peer in entry.answered:
            raise ProbeRejected(
                ProbeRejectReason.REPLAYED,
                f"{res.peer} already answered request {req.id} about {req.suspect}",
            )
        age = now - entry.asked_at
        if age > self.lifetime:
            raise ProbeRejected(
                ProbeRejectReason.LATE,
                f"result of {res.peer} about {req.suspect} came {age:.1f} s after request"
                f" {req.id} (lifetime {self.lifetime:g} s)",
            )
        entry.answered.add(res.peer)
        return entry.asked_at

    def __len__(self) -> int:
        return len(self._asked)

    def _forget_before(self, now: float) -> None:
        horizon = self.lifetime + self.remember
        while self._asked:
            oldest = next(iter(self._asked.values()))
            if now - oldest.asked_at <= horizon:
                return
            del self._asked[oldest.request.id]
