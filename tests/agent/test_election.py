"""Leader election on a `coordination.k8s.io/v1` Lease, against the Kubernetes API emulator.

Every candidate is a real `LeaderElector` with its own official-client `ClusterApi`, talking
HTTP to one `KubeApiServer` on a free loopback port (started in a fixture, stopped even on
failure). Timings are short (Lease 2 s, renew deadline 1.5 s, retry every 0.2 s), and every
wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nodefence.agent.kube.client import ClusterApi, ClusterError, LeaseInfo, load_api_client
from nodefence.agent.leader import election_client
from nodefence.agent.leader.election_client import ElectionTiming, LeaderElector, NotLeader
from nodefence.hwsim.broker import free_port
from nodefence.hwsim.kube import KubeApiServer
from tests.support.wait import eventually

NS = "nodefence"
LEASE = "nodefence-leader"
TIMING = ElectionTiming(lease_duration=2.0, renew_deadline=1.5, retry_period=0.2)
# Slack for scheduling and HTTP round trips on a busy CI machine.
SLACK = 0.5


@pytest.fixture
def kubeconfig(kube: KubeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    kube.write_kubeconfig(path)
    return path


@pytest.fixture
def dead_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming a loopback port nobody listens on (connections are refused)."""
    path = tmp_path / "dead-kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        f"clusters: [{{name: dead, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: dead, user: {}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: dead}}]\n"
    )
    return path


@pytest.fixture
def silent_kubeconfig(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig naming a port that accepts connections but never answers (a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes handshakes; nobody ever reads or replies
        port = sock.getsockname()[1]
        path = tmp_path / "silent-kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: silent\n"
            f"clusters: [{{name: silent, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
            "users: [{name: silent, user: {}}]\n"
            "contexts: [{name: silent, context: {cluster: silent, user: silent}}]\n"
        )
        yield path


def api_of(kubeconfig: Path) -> ClusterApi:
    """A client of its own through `kubeconfig` (5 s per call)."""
    return ClusterApi(load_api_client(str(kubeconfig)), timeout=5.0)


@dataclass
class Candidate:
    """One elector campaigning in a task, with a `lead()` that records when it runs."""

    elector: LeaderElector
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    leading: bool = False  # the lead task is running right now
    lead_started: list[float] = field(default_factory=list)
    lead_ended: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.elector.identity

    async def lead(self) -> None:
        self.leading = True
        self.lead_started.append(time.monotonic())
        try:
            await asyncio.Event().wait()  # lead until cancelled
        finally:
            self.leading = False
            self.lead_ended.append(time.monotonic())

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self.lead, self.stop), name=self.name)


@pytest_asyncio.fixture
async def candidates(kubeconfig: Path) -> AsyncIterator[Callable[[int], list[Candidate]]]:
    """Makes N candidates (not started), each with its own API client; all stopped at the end."""
    made: list[Candidate] = []

    def make(n: int, timing: ElectionTiming = TIMING) -> list[Candidate]:
        batch = []
        for _ in range(n):
            api = api_of(kubeconfig)
            name = f"node-{len(made) + 1}"
            made.append(Candidate(LeaderElector(api, NS, LEASE, name, timing, node=name)))
            batch.append(made[-1])
        return batch

    try:
        yield make
    finally:
        for c in made:
            c.stop.set()
        tasks = [c.task for c in made if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def lease(kube: KubeApiServer) -> dict[str, Any]:
    """The Lease's spec as the API server stores it (read around our client)."""
    spec: dict[str, Any] = kube.store.get("leases", LEASE, NS)["spec"]
    return spec


def leaders(cands: list[Candidate]) -> list[Candidate]:
    return [c for c in cands if c.elector.is_leader]


def the_leader(cands: list[Candidate]) -> Candidate | None:
    now = leaders(cands)
    return now[0] if len(now) == 1 else None


async def sample_single_leader(
    kube: KubeApiServer, cands: list[Candidate], seconds: float
) -> Candidate:
    """Sample every 20 ms for `seconds`: exactly one leader, only it leads, the Lease names it."""
    first = await eventually("a first leader", lambda: the_leader(cands))
    deadline = time.monotonic() + seconds
    samples = 0
    while time.monotonic() < deadline:
        now = leaders(cands)
        assert [c.name for c in now] == [first.name], f"sample {samples}: leaders {now}"
        assert [c.name for c in cands if c.leading] in ([], [first.name])
        samples += 1
        await asyncio.sleep(0.02)
    assert samples > seconds / 0.05
    assert first.leading
    assert lease(kube)["holderIdentity"] == first.name
    return first


async def leader_and_other(
    kube: KubeApiServer, cands: list[Candidate]
) -> tuple[Candidate, Candidate]:
    """Start two candidates: (the one elected, the other)."""
    leader = await elected(kube, cands, 0.3)
    return leader, next(c for c in cands if c is not leader)


async def elected(kube: KubeApiServer, cands: list[Candidate], seconds: float) -> Candidate:
    """Start `cands`; their one leader, sampled for `seconds` (`sample_single_leader`)."""
    for c in cands:
        c.start()
    return await sample_single_leader(kube, cands, seconds)


# -- one leader at a time --------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3])
async def test_n_candidates_elect_exactly_one_leader_that_the_lease_names(
    n: int, kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    cands = candidates(n)
    leader = await elected(kube, cands, 2.0)
    assert lease(kube)["leaseTransitions"] == 0
    assert all(not c.lead_started for c in cands if c is not leader)


async def test_each_clean_handover_moves_the_lease_and_counts_one_transition(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    cands = candidates(3)
    for c in cands:
        c.start()
    remaining = list(cands)
    for transitions in range(3):
        leader = await sample_single_leader(kube, remaining, 0.6)
        assert lease(kube)["leaseTransitions"] == transitions
        leader.stop.set()
        assert leader.task is not None
        await asyncio.wait_for(leader.task, 5)
        remaining.remove(leader)
    assert not remaining
    assert lease(kube).get("holderIdentity") is None  # the last one handed it back


# -- leading only while holding the Lease ----------------------------------------------------


async def test_lead_task_runs_only_while_leading_and_a_clean_stop_hands_over_at_once(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    cands = candidates(2)
    first = await elected(kube, cands, 0.5)
    second = next(c for c in cands if c is not first)
    assert first.leading and not second.lead_started

    stopped_at = time.monotonic()
    first.stop.set()
    await eventually("the successor leads", lambda: second.leading)
    took_over = second.lead_started[0] - stopped_at

    assert first.lead_ended and not first.leading
    assert first.lead_ended[0] <= second.lead_started[0]  # never two lead tasks at once
    assert took_over < TIMING.lease_duration / 2, f"handover took {took_over:.2f} s"
    assert lease(kube)["holderIdentity"] == second.name
    assert lease(kube)["leaseTransitions"] == 1
    assert first.task is not None and first.task.done() and first.task.exception() is None


async def test_a_sole_leader_stopping_cleanly_clears_the_lease_holder(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    (only,) = candidates(1)
    only.start()
    await eventually("leading", lambda: only.leading)
    only.stop.set()
    assert only.task is not None
    await asyncio.wait_for(only.task, 5)

    spec = lease(kube)
    assert spec.get("holderIdentity") is None
    assert spec["leaseDurationSeconds"] == 1
    assert not only.elector.is_leader and not only.leading
    with pytest.raises(NotLeader):
        await only.elector.confirm()


async def test_confirm_renews_for_the_leader_and_raises_not_leader_for_the_others(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    leader, other = await leader_and_other(kube, candidates(2))
    before = kube.store.get("leases", LEASE, NS)["metadata"]["resourceVersion"]

    await leader.elector.confirm()

    assert kube.store.get("leases", LEASE, NS)["metadata"]["resourceVersion"] != before
    with pytest.raises(NotLeader):
        await other.elector.confirm()


async def test_a_leader_side_that_crashes_surfaces_its_error_and_hands_the_lease_back(
    kube: KubeApiServer, kubeconfig: Path
) -> None:
    api = ClusterApi(load_api_client(str(kubeconfig)))
    elector = LeaderElector(api, NS, LEASE, "node-1", TIMING)

    async def lead() -> None:
        raise RuntimeError("leader side broke")

    with pytest.raises(RuntimeError, match="leader side broke"):
        await asyncio.wait_for(elector.run(lead, asyncio.Event()), 5)
    assert lease(kube).get("holderIdentity") is None


# -- losing the API server -------------------------------------------------------------------


def track_writes(c: Candidate) -> list[float]:
    """Record the start time of each Lease write `c` makes that the server accepted."""
    accepted: list[float] = []
    write = c.elector.api.write_lease

    async def recording(*args: Any, **kwargs: Any) -> LeaseInfo:
        started = time.monotonic()
        info = await write(*args, **kwargs)
        accepted.append(started)
        return info

    c.elector.api.write_lease = recording
    return accepted


async def renewals_of(c: Candidate) -> list[float]:
    """The start times of `c`'s accepted Lease writes from now on, once there is a first."""
    renewals = track_writes(c)
    await eventually("a tracked renewal", lambda: renewals)
    return renewals


async def test_a_leader_cut_from_the_api_server_stops_leading_before_anyone_can_take_over(
    kube: KubeApiServer,
    candidates: Callable[[int], list[Candidate]],
    dead_kubeconfig: Path,
) -> None:
    leader, other = await leader_and_other(kube, candidates(2))
    renewals = await renewals_of(leader)

    # Connections to the API server are now refused, for the leader only.
    leader.elector.api = api_of(dead_kubeconfig)
    await eventually("the leader steps down", lambda: not leader.leading, 5)
    last_renewal = renewals[-1]
    stepped_down = leader.lead_ended[-1] - last_renewal

    assert stepped_down <= TIMING.renew_deadline + TIMING.retry_period + SLACK
    assert stepped_down < TIMING.lease_duration
    assert not leader.elector.is_leader
    with pytest.raises(NotLeader):
        await leader.elector.confirm()

    await eventually("the other candidate leads", lambda: other.leading, 5)
    assert other.lead_started[0] >= leader.lead_ended[-1]  # no overlap
    assert other.lead_started[0] - last_renewal >= TIMING.lease_duration
    assert lease(kube)["holderIdentity"] == other.name
    assert leader.task is not None and not leader.task.done()  # still campaigning, not crashed


async def test_a_leader_whose_api_server_stops_the_whole_emulator_steps_down_in_time(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    (only,) = candidates(1)
    only.start()
    await eventually("leading", lambda: only.leading)
    renewals = await renewals_of(only)

    kube.stop_thread()
    await eventually("the leader steps down", lambda: not only.leading, 5)

    stepped_down = only.lead_ended[-1] - renewals[-1]
    assert stepped_down <= TIMING.renew_deadline + TIMING.retry_period + SLACK
    assert stepped_down < TIMING.lease_duration
    with pytest.raises(NotLeader):
        await only.elector.confirm()


async def test_a_leader_whose_api_calls_hang_steps_down_within_the_renew_deadline(
    kube: KubeApiServer,
    candidates: Callable[[int], list[Candidate]],
    silent_kubeconfig: Path,
) -> None:
    leader, other = await leader_and_other(kube, candidates(2))
    renewals = await renewals_of(leader)

    # The API server now accepts connections but never answers this leader.
    leader.elector.api = api_of(silent_kubeconfig)
    await eventually("the other candidate leads", lambda: other.leading, 5)
    took_over = other.lead_started[0]

    assert leader.lead_ended, "the old leader was still leading when the successor started"
    assert leader.lead_ended[-1] <= took_over
    assert leader.lead_ended[-1] - renewals[-1] < TIMING.lease_duration


async def test_a_leader_side_that_swallows_one_cancellation_is_still_stopped_on_loss(
    kube: KubeApiServer, kubeconfig: Path, dead_kubeconfig: Path
) -> None:
    elector = LeaderElector(ClusterApi(load_api_client(str(kubeconfig))), NS, LEASE, "n1", TIMING)
    stop = asyncio.Event()
    acting = asyncio.Event()
    stopped = asyncio.Event()

    async def lead() -> None:
        acting.set()
        try:
            with contextlib.suppress(asyncio.CancelledError):  # as a Python 3.11 wait_for race
                await asyncio.Event().wait()
            await asyncio.Event().wait()
        finally:
            stopped.set()

    run = asyncio.create_task(elector.run(lead, stop))
    try:
        await asyncio.wait_for(acting.wait(), 5)
        elector.api = ClusterApi(load_api_client(str(dead_kubeconfig)))
        # Lost after renew_deadline; the leader side must be gone before lease_duration.
        await asyncio.wait_for(stopped.wait(), TIMING.lease_duration)
    finally:
        stop.set()
        for _ in range(50):  # the elector may need more than one cancel to end
            if run.done():
                break
            run.cancel()
            await asyncio.wait([run], timeout=0.1)


async def test_the_electors_wait_ends_at_its_time_or_at_stop_and_leaves_no_task() -> None:
    stop = asyncio.Event()
    pauses = election_client._Pauses(stop)
    before = len(asyncio.all_tasks())
    started = time.monotonic()
    await pauses.sleep(0.05)
    assert 0.04 < time.monotonic() - started < 1.0
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    await pauses.sleep(30.0)  # cut short by stop
    assert time.monotonic() - started < 1.0
    await pauses.sleep(30.0)  # stop is set: no wait at all
    pauses.close()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before


async def test_a_fractional_lease_duration_is_never_shortened_in_the_lease(
    kube: KubeApiServer, kubeconfig: Path
) -> None:
    timing = ElectionTiming(lease_duration=2.4, renew_deadline=2.2, retry_period=0.2)
    elector = LeaderElector(ClusterApi(load_api_client(str(kubeconfig))), NS, LEASE, "n1", timing)
    assert await elector._try_acquire_or_renew()
    assert lease(kube)["leaseDurationSeconds"] >= timing.lease_duration


# -- optimistic concurrency --------------------------------------------------------------------


def read_in_lockstep(cands: list[Candidate]) -> list[int | None]:
    """Make every candidate's Lease read finish before any of them writes, and record each
    failed write's HTTP status."""
    barrier = asyncio.Barrier(len(cands))
    statuses: list[int | None] = []
    for c in cands:
        api = c.elector.api
        get, write = api.get_lease, api.write_lease

        async def get_then_wait(*args: Any, _get: Any = get, **kwargs: Any) -> LeaseInfo | None:
            info: LeaseInfo | None = await _get(*args, **kwargs)
            await barrier.wait()
            return info

        async def write_recording(*args: Any, _write: Any = write, **kwargs: Any) -> LeaseInfo:
            try:
                info: LeaseInfo = await _write(*args, **kwargs)
                return info
            except ClusterError as err:
                statuses.append(err.status)
                raise

        api.get_lease = get_then_wait
        api.write_lease = write_recording
    return statuses


async def test_two_candidates_racing_to_create_the_lease_one_wins_the_other_gets_409(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    cands = candidates(2)
    conflicts = read_in_lockstep(cands)

    won = await asyncio.gather(*(c.elector._try_acquire_or_renew() for c in cands))

    assert sorted(won) == [False, True]
    assert conflicts == [409]
    winner, loser = (cands[0], cands[1]) if won[0] else (cands[1], cands[0])
    assert winner.elector.is_leader and not loser.elector.is_leader
    assert lease(kube)["holderIdentity"] == winner.name


async def test_a_stale_update_gets_409_and_means_someone_else_won(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    first, a, b = candidates(3)
    assert await first.elector._try_acquire_or_renew()
    await first.elector._release()  # holder cleared: free for whoever writes first
    conflicts = read_in_lockstep([a, b])

    won = await asyncio.gather(a.elector._try_acquire_or_renew(), b.elector._try_acquire_or_renew())

    assert sorted(won) == [False, True]
    assert conflicts == [409]  # the loser wrote with the resourceVersion both had read
    winner = a if won[0] else b
    assert lease(kube)["holderIdentity"] == winner.name
    assert lease(kube)["leaseTransitions"] == 1
    assert leaders([first, a, b]) == [winner]


async def test_a_409_is_not_logged_as_a_failure(
    kube: KubeApiServer,
    candidates: Callable[[int], list[Candidate]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cands = candidates(2)
    conflicts = read_in_lockstep(cands)
    with caplog.at_level("WARNING", logger="nodefence.election"):
        await asyncio.gather(*(c.elector._try_acquire_or_renew() for c in cands))
    assert conflicts == [409]
    assert not [r for r in caplog.records if r.name == "nodefence.election"]


# -- a leader killed hard ----------------------------------------------------------------------


async def test_a_leader_killed_hard_is_replaced_after_the_lease_duration_not_before(
    kube: KubeApiServer,
    candidates: Callable[[int], list[Candidate]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cands = candidates(3)
    victim = await elected(kube, cands, 0.3)
    renewals = await renewals_of(victim)

    await kill(victim, monkeypatch)
    killed_at = time.monotonic()
    last_renewal = renewals[-1]
    assert lease(kube)["holderIdentity"] == victim.name  # nobody released it

    survivors = [c for c in cands if c is not victim]
    successor = await eventually(
        "a successor", lambda: next((c for c in survivors if c.leading), None), 5
    )
    took_over = successor.lead_started[0]

    assert took_over - last_renewal >= TIMING.lease_duration
    assert took_over - killed_at <= TIMING.lease_duration + 2 * TIMING.retry_period + SLACK
    assert lease(kube)["holderIdentity"] == successor.name
    assert lease(kube)["leaseTransitions"] == 1
    assert await sample_single_leader(kube, survivors, 0.5) is successor


async def test_two_agents_started_with_the_same_node_name_never_both_lead(
    kube: KubeApiServer, kubeconfig: Path
) -> None:
    # A stale pod beside its replacement, or a copy-pasted NODE_NAME: each process campaigns
    # under its own identity (node name plus a per-process id), so only one holds the Lease.
    from nodefence.agent.leader.candidate_runner import identity_node, leader_identity

    cands = [
        Candidate(
            LeaderElector(
                api_of(kubeconfig),
                NS,
                LEASE,
                leader_identity("node-1"),
                TIMING,
            )
        )
        for _ in range(2)
    ]
    assert cands[0].name != cands[1].name
    try:
        for c in cands:
            c.start()
        first = await sample_single_leader(kube, cands, 1.5)
        assert identity_node(lease(kube)["holderIdentity"]) == "node-1"
        assert not [c for c in cands if c is not first and c.lead_started]
    finally:
        for c in cands:
            c.stop.set()
        await asyncio.gather(*(c.task for c in cands if c.task), return_exceptions=True)


# -- maintenance: the leader's node hands leadership off (issue 21) --------------------------


async def test_a_leader_whose_node_enters_maintenance_hands_off_to_another_candidate(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    cands = candidates(2)
    marked: set[str] = set()
    for c in cands:
        c.elector.defer = lambda name=c.name: name in marked
        c.start()
    first = await eventually("a first leader", lambda: the_leader(cands))
    other = next(c for c in cands if c is not first)
    marked.add(first.name)  # `maintenance enter` marked its node
    await eventually("the other leads", lambda: the_leader(cands) is other or None)
    assert not first.leading and lease(kube)["holderIdentity"] == other.name
    # It stays a candidate, but defers: it never takes the Lease back while marked.
    await asyncio.sleep(TIMING.lease_duration + 2 * TIMING.retry_period)
    assert the_leader(cands) is other and len(first.lead_started) == 1


async def test_a_sole_candidate_in_maintenance_takes_the_lease_back_and_keeps_it(
    kube: KubeApiServer, candidates: Callable[[int], list[Candidate]]
) -> None:
    [only] = candidates(1)
    marked: set[str] = set()
    only.elector.defer = lambda: only.name in marked
    only.start()
    await eventually("it leads", lambda: only.leading or None)
    marked.add(only.name)
    await eventually("it handed off", lambda: not only.leading or None)
    # Nobody else took it: after a whole lease_duration it leads again, and does not flap.
    await eventually("it leads again", lambda: only.leading or None, TIMING.lease_duration + 5)
    await asyncio.sleep(TIMING.lease_duration + 2 * TIMING.retry_period)
    assert only.leading and len(only.lead_started) == 2


async def test_the_agent_watches_its_own_nodes_mark_and_keeps_the_last_one_while_cut_off(
    kube: KubeApiServer, kubeconfig: Path, dead_kubeconfig: Path
) -> None:
    from nodefence.agent.kube.client import MAINTENANCE_LABEL, ClusterApi, load_api_client
    from nodefence.agent.leader.handoff import lease_holder_node
    from nodefence.agent.node.self_watch import NodeWatch

    kube.store.create("nodes", {"metadata": {"name": "n1"}})
    kube.store.create("nodes", {"metadata": {"name": "n2"}})
    api = ClusterApi(load_api_client(str(kubeconfig)))
    own = NodeWatch(api, NS, "n1", records=False, clock=time.monotonic)
    task = asyncio.create_task(own.run())
    try:
        await eventually("its Node listed", lambda: own.own.synced.is_set())
        assert not own.marked()
        kube.store.patch("nodes", "n2", {"metadata": {"labels": {MAINTENANCE_LABEL: "true"}}})
        kube.store.patch("nodes", "n1", {"metadata": {"labels": {MAINTENANCE_LABEL: "draining"}}})
        await eventually("marked while draining", own.marked)
        own.own.source = ClusterApi(load_api_client(str(dead_kubeconfig)), timeout=1.0)
        kube.close_watches()  # cut off: the watch ends, and every new request is refused
        await eventually("its watch broken", lambda: own.own.stats.errors > 0)
        assert own.marked()  # the last mark seen holds while the API cannot be read
        own.own.source = api
        kube.store.patch("nodes", "n1", {"metadata": {"labels": {MAINTENANCE_LABEL: None}}})
        await eventually("unmarked once the mark is gone", lambda: not own.marked())
        assert [n for n in own.own.items()] == ["n1"]  # its own Node only (field selector)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert lease_holder_node("node-2_1a2b") == "node-2" and lease_holder_node(None) is None


# -- warm standbys ------------------------------------------------------------------------------

WARM = ElectionTiming(
    lease_duration=2.0, renew_deadline=1.5, retry_period=0.2, cold_retry_period=1.0
)


def annotated_standbys(kube: KubeApiServer) -> str:
    meta = kube.store.get("leases", LEASE, NS)["metadata"]
    return str((meta.get("annotations") or {}).get("nodefence.io/standbys", ""))


async def kill(victim: Candidate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop a candidate as SIGKILL would: nothing handed back."""

    async def vanish() -> None:
        """A killed process hands nothing back."""

    monkeypatch.setattr(victim.elector, "_release", vanish)
    assert victim.task is not None
    victim.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await victim.task


async def test_the_leader_names_warm_standbys_on_its_lease_and_they_know_it(
    kube: KubeApiServer, candidates: Callable[..., list[Candidate]]
) -> None:
    cands = candidates(3, WARM)
    leader = await elected(kube, cands, 0.3)
    warm, cold = [c for c in cands if c is not leader]
    leader.elector.standbys = (warm.name,)

    await eventually("the Lease names the standby", lambda: annotated_standbys(kube) == warm.name)
    await eventually("the standby knows", lambda: warm.elector.is_standby, 3)
    await eventually("the cold one read it", lambda: cold.elector.observed_standbys, 3)
    assert not cold.elector.is_standby and not leader.elector.is_standby
    assert cold.elector._period() == WARM.cold_retry_period  # reads the Lease less often
    assert warm.elector._period() == WARM.retry_period


async def test_a_killed_leader_is_replaced_by_its_warm_standby_not_a_cold_candidate(
    kube: KubeApiServer,
    candidates: Callable[..., list[Candidate]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cands = candidates(3, WARM)
    leader = await elected(kube, cands, 0.3)
    # The last-started candidate, so winning is no accident of who asked first.
    warm = cands[-1] if cands[-1] is not leader else cands[-2]
    cold = next(c for c in cands if c not in (leader, warm))
    leader.elector.standbys = (warm.name,)
    await eventually("the standby knows", lambda: warm.elector.is_standby, 3)
    await eventually("the cold one read it", lambda: cold.elector.observed_standbys, 3)
    renewals = await renewals_of(leader)

    await kill(leader, monkeypatch)
    last_renewal = renewals[-1]
    successor = await eventually(
        "a successor", lambda: next((c for c in (warm, cold) if c.leading), None), 8
    )

    assert successor is warm
    took_over = warm.lead_started[0]
    assert WARM.lease_duration <= took_over - last_renewal
    assert took_over - last_renewal <= WARM.lease_duration + 2 * WARM.retry_period + SLACK
    assert not cold.lead_started
    assert warm.elector.standbys == ()  # a leader never names itself
    assert await sample_single_leader(kube, [warm, cold], 1.0) is warm


async def test_a_cold_candidate_still_takes_over_when_no_warm_standby_is_left(
    kube: KubeApiServer,
    candidates: Callable[..., list[Candidate]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cands = candidates(2, WARM)
    leader = await elected(kube, cands, 0.3)
    cold = next(c for c in cands if c is not leader)
    leader.elector.standbys = ("node-gone",)  # its machine died with the leader's
    await eventually("the cold one read it", lambda: cold.elector.observed_standbys, 3)
    renewals = await renewals_of(leader)

    await kill(leader, monkeypatch)
    last_renewal = renewals[-1]
    await eventually("the cold candidate leads", lambda: cold.leading, 10)

    took_over = cold.lead_started[0]
    # It yields one further lease_duration to a warm standby that never comes.
    assert took_over - last_renewal >= 2 * WARM.lease_duration
    assert took_over - last_renewal <= 2 * WARM.lease_duration + WARM.cold_retry_period + SLACK
