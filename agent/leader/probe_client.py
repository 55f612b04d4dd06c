"""The leader's side of peer probes: ask healthy peers to probe a suspect, take their answers.

`LeaderProbes` publishes signed probe requests (`nodefence.agent.probes.peers`,
`nodefence.agent.probes.signing`) and admits the probe results the broker delivers (every message
but heartbeats and statuses): verified, matched to an outstanding request, then handed to the
detector as peer reports.
"""

from __future__ import annotations

import contextlib
import logging

from nodefence.agent.heartbeat.codec import PREFIX
from nodefence.agent.heartbeat.signing import AuthMode
from nodefence.agent.leader.state_client import LeaderState
from nodefence.agent.mqtt.leader_broker_client import BrokerLost
from nodefence.agent.observe import metrics
from nodefence.agent.probes.peers import (
    ProbeRequest,
    Target,
    choose_peers,
    decode_result,
    encode_request,
    probe_topic,
)
from nodefence.agent.probes.signing import UNSIGNED_ACCEPTED, ProbeRejected, sign_request

log = logging.getLogger("nodefence.leader")


class LeaderProbes(LeaderState):
    """Probe requests out, probe results in."""

    def _on_message(self, topic: str, data: bytes) -> None:
        """Everything but heartbeats and statuses (the ingest's): probe results."""
        now = self.clock()
        prefix = f"{PREFIX}/{self.cfg.cluster}/probe-result/"
        if not topic.startswith(prefix):
            return
        res = decode_result(topic[len(prefix) :], data)
        if res is None:
            self.stats.rejected["malformed_probe_result"] += 1
            metrics.REJECTED.labels("malformed_probe_result").inc()
            return
        try:
            # The signature first, so a forgery never uses up a peer's one answer.
            signed = self.probe_verifier.check(res, self.wall())
            asked_at = self.probes.admit(res, now)
        except ProbeRejected as rej:
            self.stats.rejected[rej.reason.value] += 1
            metrics.REJECTED.labels(rej.reason.value).inc()
            log.debug("dropped probe result on %s: %s", topic, rej)
            return
        if not signed and self.verifier.mode is AuthMode.PERMISSIVE:
            self.stats.rejected[UNSIGNED_ACCEPTED] += 1  # counted only
            metrics.REJECTED.labels(UNSIGNED_ACCEPTED).inc()
        self.stats.probe_results += 1
        # "Unreachable" may describe any moment since the request went out: stamp it then,
        # so a heartbeat received meanwhile outweighs it. "Reachable" counts on receipt.
        at = now if res.reachable else asked_at
        self.detector.observe_peer_report(res.suspect, res.peer, res.reachable, at)

    async def _ask_peers(self, suspect: str, healthy: list[str], now: float) -> None:
        last = self._probed.get(suspect)
        if last is not None and now - last < max(self.profile.interval, 0.5):
            return
        info = self.nodes.get(suspect)
        if not self._broker_up or info is None:
            return
        targets: list[Target] = []
        # Announced by the node's pinned key; the annotation is what agents of releases before
        # the fencer split wrote.
        keyring = self.ingest.keyring
        endpoint = (keyring.health.get(suspect) if keyring else None) or info.health_endpoint
        if endpoint and ":" in endpoint:
            host, _, port = endpoint.rpartition(":")
            if port.isdigit():
                targets.append(Target(host, int(port), "agent"))
        if info.internal_ip and info.kubelet_port:
            targets.append(Target(info.internal_ip, info.kubelet_port, "kubelet"))
        if not targets:
            return
        self._probe_salt += 1
        peers = choose_peers(
            suspect, healthy, max(self.profile.peer_quorum, 1) + 1, self._probe_salt
        )
        if not peers:
            return
        req = ProbeRequest(self.new_id(), suspect, peers, tuple(targets))
        if keyring is not None:
            req = sign_request(req, keyring, int(self.wall() * 1000))
        self._probed[suspect] = now
        self.probes.asked(req, now)  # before publishing: an answer may come back at once
        with contextlib.suppress(BrokerLost):
            await self.broker.publish(probe_topic(self.cfg.cluster, suspect), encode_request(req))
            self.stats.probes_sent += 1
