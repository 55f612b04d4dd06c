"""The deterministic simulation (`nodefence.hwsim.sim`): its loop and edges, its teeth, its
determinism, the regression seeds of the defects it found, and the CI budget of seeds.

Run alone with `.venv/bin/python -m pytest -q -m simulation tests/hwsim/test_simulation.py`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import time
from typing import Any

import pytest

from nodefence.agent.kube.client import ClusterError
from nodefence.agent.leader.election_client import LeaderElector
from nodefence.backends.base import CheckResult, PowerBackend, PowerState
from nodefence.hwsim.sim.api import ApiChaos, SimClusterApi
from nodefence.hwsim.sim.apiserver import ApiServer
from nodefence.hwsim.sim.broker import topic_matches
from nodefence.hwsim.sim.runner import RunResult, run_seed
from nodefence.hwsim.sim.trace import Trace
from nodefence.hwsim.sim.vloop import SimProcess, VirtualLoop, spawn
from nodefence.hwsim.sim.world import World
from tests.conftest import REPO

pytestmark = pytest.mark.simulation

CI_SEEDS = range(1, 1001)  # the budget CI runs (about a minute and a half on one core)


# -- the virtual loop ------------------------------------------------------------------------


def test_virtual_time_jumps_to_the_next_timer_without_waiting() -> None:
    loop = VirtualLoop()

    async def an_hour() -> float:
        await asyncio.sleep(3600)
        return loop.time()

    started = time.monotonic()
    assert loop.run_until_complete(an_hour()) == 3600
    assert time.monotonic() - started < 1.0
    loop.close()


def test_a_paused_process_runs_nothing_until_resumed_then_catches_up_once() -> None:
    loop = VirtualLoop()
    proc = SimProcess("p")
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1)
            ticks.append(loop.time())

    spawn(loop, proc, ticker(), "ticker")
    loop.call_at(2.5, loop.pause, proc)
    loop.call_at(10.5, loop.resume, proc)
    loop.run_until_complete(asyncio.sleep(12))
    # 1, 2 run; 3..10 fall due while paused: the one parked wake-up runs at 10.5.
    assert ticks == [1, 2, 10.5, 11.5]
    loop.close()


def test_a_killed_process_never_runs_again_but_its_sent_requests_land() -> None:
    loop = VirtualLoop()
    trace = Trace(loop.time)
    server = ApiServer(loop, trace)
    api = SimClusterApi(server, random.Random(1))
    proc = SimProcess("p")
    after: list[str] = []

    async def writer() -> None:
        body = {"metadata": {"name": "r1", "labels": {}}, "spec": {"nodeName": "n1"}}
        await api.save_record("ns", body)
        after.append("answer read")

    spawn(loop, proc, writer(), "writer")
    loop.run_until_complete(asyncio.sleep(0.001))  # the request is on its way
    loop.kill(proc)
    loop.run_until_complete(asyncio.sleep(1))
    assert "r1" in server.records["ns"]
    assert after == []
    loop.close()


def test_sets_of_tasks_are_walked_in_creation_order() -> None:
    loop = VirtualLoop()

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(asyncio.sleep(1)) for _ in range(40)]
        order = [hash(t) for t in set(tasks)]
        for t in tasks:
            t.cancel()
        return order

    order = loop.run_until_complete(main())
    assert order == sorted(order)
    loop.close()


# -- the edges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filt", "topic", "matches"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/b", "a/b/c", False),
        ("#", "$SYS/x", False),
        ("nodefence/v1/sim/heartbeat/+", "nodefence/v1/sim/heartbeat/node-1", True),
        ("nodefence/v1/sim/heartbeat/+", "nodefence/v1/sim/probe/node-1", False),
    ],
)
def test_topic_filters_match_as_mqtt_says(filt: str, topic: str, matches: bool) -> None:
    assert topic_matches(filt, topic) is matches


def _api() -> tuple[VirtualLoop, ApiServer, SimClusterApi]:
    loop = VirtualLoop()
    server = ApiServer(loop, Trace(loop.time))
    return loop, server, SimClusterApi(server, random.Random(2))


def test_the_api_refuses_a_stale_record_update_with_409_and_a_duplicate_create() -> None:
    loop, _, api = _api()
    body: dict[str, Any] = {"metadata": {"name": "r1", "labels": {}}, "spec": {"nodeName": "n"}}

    async def main() -> list[int | None]:
        first = await api.save_record("ns", body)
        await api.save_record("ns", first)  # with the current resourceVersion: accepted
        statuses: list[int | None] = []
        for attempt in (first, body):  # stale resourceVersion, then a second create
            try:
                await api.save_record("ns", attempt)
            except ClusterError as err:
                statuses.append(err.status)
        return statuses

    assert loop.run_until_complete(main()) == [409, 409]
    loop.close()


def test_a_timed_out_write_may_have_landed() -> None:
    loop, server, api = _api()
    api.chaos = ApiChaos(timeout=1.0, landed=1.0)
    api.chaos_until = 100.0

    async def main() -> str:
        body = {"metadata": {"name": "r1", "labels": {}}, "spec": {"nodeName": "n"}}
        try:
            await api.save_record("ns", body)
        except ClusterError as err:
            return str(err)
        return "answered"

    assert "no answer within 5 s" in loop.run_until_complete(main())
    assert "r1" in server.records["ns"]
    loop.close()


def test_a_record_label_longer_than_63_characters_is_refused_like_a_real_api_server() -> None:
    loop, _, api = _api()
    body = {"metadata": {"name": "r1", "labels": {"nodefence.io/node": "n" * 64}}}

    async def main() -> int | None:
        try:
            await api.save_record("ns", body)
        except ClusterError as err:
            return err.status
        return None

    assert loop.run_until_complete(main()) == 422
    loop.close()


# -- whole runs ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_event_log() -> None:
    first, second = run_seed(1), run_seed(1)  # a run that fences (power-offs, a record)
    assert first.events == second.events
    assert first.log_tail == second.log_tail
    assert first.steps == second.steps and first.steps > 1000 and first.power_offs


def test_no_garbage_is_collected_during_a_run_and_the_collector_is_back_after_it() -> None:
    # A collection finalizes unreachable coroutines and async generators, and finalizers
    # schedule callbacks: when it ran (after how many allocations, so after which earlier
    # runs of the process) changed a run's steps (seed 900132, one intermediate commit of
    # this change: 3222 steps in the batch, 3220 with the collector off).
    seen: list[bool] = []

    def look(world: World) -> None:
        for at in (0.5, 20.0, 40.0):
            world.loop.call_at(at, lambda: seen.append(gc.isenabled()), context=world.loop.harness)

    assert gc.isenabled()
    run_seed(1, mutate=look)
    assert seen == [False, False, False]
    assert gc.isenabled()
    gc.disable()
    try:
        run_seed(1, mutate=look)
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_a_replay_in_a_fresh_process_prints_the_same_output_every_time() -> None:
    def replay() -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("PYTHONHASHSEED", None)  # the command must set it itself
        done = subprocess.run(
            [sys.executable, "-m", "nodefence.hwsim.cli", "simulate", "--replay", "7", "-v"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
        return done.stdout

    first, second = replay(), replay()
    assert "-- event log:" in first
    assert first == second


class _ClaimsOff(PowerBackend):
    """The injected bug: a backend that reports Off without reading the BMC back."""

    def __init__(self, inner: PowerBackend) -> None:
        self.inner = inner
        self.node = inner.node
        self.device = inner.device

    async def power_state(self) -> PowerState:
        return PowerState.OFF

    async def power_off(self) -> None:
        await self.inner.power_off()

    async def power_on(self) -> None:
        await self.inner.power_on()

    async def check(self) -> CheckResult:
        return await self.inner.check()


def _skip_off_proof(world: World) -> None:
    world.backend_wrapper = _ClaimsOff


UNSAFE = frozenset({"split-brain", "unproven-cleanup"})


def _unsafe(result: RunResult) -> set[str]:
    return {v.invariant for v in result.violations} & UNSAFE


def test_a_skipped_off_proof_is_found_within_200_seeds() -> None:
    for seed in range(1, 201):
        mutated = run_seed(seed, mutate=_skip_off_proof)
        if _unsafe(mutated) and not _unsafe(run_seed(seed)):
            return  # the injected bug, and nothing else, broke a safety invariant
    pytest.fail("200 seeds did not notice a backend that claims Off without reading back")


async def _no_lease_check(self: LeaderElector) -> None:
    return None


def test_a_leader_that_never_checks_its_lease_is_found_within_200_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The injected bug: confirm() always succeeds and leadership is never given up.
    monkeypatch.setattr(LeaderElector, "confirm", _no_lease_check)
    monkeypatch.setattr(LeaderElector, "is_leader", property(lambda self: True))
    for seed in range(1, 201):
        if any(v.invariant == "two-leaders" for v in run_seed(seed).violations):
            return
    pytest.fail("200 seeds did not notice a leader that acts without holding the Lease")


# -- regression seeds: the defects this harness found (each failed before its fix) -------------
#
# The first four broke the named invariant on the code before issue 12's fixes (branch `sim`
# from d2bb40f); the later ones on main after them (f07083c). A seed is one exact run of
# today's harness and agent: when either changes, the run changes too, and a seed may stop
# reproducing its defect (the CI budget below keeps looking).


def _details(seed: int, invariant: str, words: str) -> list[str]:
    return [
        str(v) for v in run_seed(seed).violations if v.invariant == invariant and words in v.detail
    ]


# Issue 12 item 3: a new leader resumed a Pending operation before any guard and powered off
# a node that was up and heartbeating.
@pytest.mark.parametrize("seed", [426, 816])
def test_a_new_leader_never_powers_off_a_node_it_did_not_declare_dead(seed: int) -> None:
    assert _details(seed, "wrong-fence", "without having declared") == []


# Issue 12 item 5: a resumed Recovering operation never finished (records.from_record did not
# restore recovery_deadline).
@pytest.mark.parametrize("seed", [82, 187])
def test_a_resumed_recovering_operation_ends_within_its_deadline(seed: int) -> None:
    assert _details(seed, "stuck-operation", "still Recovering") == []


# Issue 12 item 2: verify_all_channels took a channel that answers with an error as "cannot
# contradict", so an Off read early on the other channel was taken as proof.
@pytest.mark.parametrize("seed", [277, 438])
def test_an_errored_channel_beside_an_early_off_read_is_no_proof(seed: int) -> None:
    assert _details(seed, "unproven-cleanup", "machine is on") == []
    assert _details(seed, "split-brain", "") == []


# Issue 12 item 1: a watchdog disarmed by a clean agent stop was taken as proof of Off (the
# last armed claim had no age limit).
@pytest.mark.parametrize("seed", [630, 917])
def test_a_disarmed_watchdog_is_no_proof(seed: int) -> None:
    assert _details(seed, "unproven-cleanup", "machine is on") == []
    assert _details(seed, "split-brain", "") == []


def test_a_proof_is_recorded_before_any_cleanup_even_when_another_writer_touched_the_record() -> (
    None
):
    # 900554: a 409 from another writer stopped the operation after it proved Off in memory;
    # the leader's pick-up relaunched the in-memory operation, whose taint and deletion went
    # out while every save of the proof kept failing: the record never said offProven.
    assert _details(900554, "unproven-cleanup", "") == []


@pytest.mark.parametrize("seed", [900733, 900833])
def test_a_machine_powered_on_again_after_its_proof_is_not_cleaned_up(seed: int) -> None:
    # The proof of an earlier incident was stored (PoweredOff); the machine was repaired and
    # powered on, its VMs started on it again; a new leader resumed the operation and deleted
    # the Node of a running machine: its VMs then ran twice.
    assert _details(seed, "split-brain", "") == []
    assert _details(seed, "unproven-cleanup", "") == []


def test_no_life_is_missed_between_the_last_look_and_the_power_off_request() -> None:
    # 900344: the requests of a level were scheduled as tasks after the guard's last look, so
    # heartbeats handled in between (here after a pause) did not stop the power-off.
    assert _details(900344, "wrong-fence", "") == []


def test_a_storm_the_leader_holds_is_no_missed_fence() -> None:
    # 900866 (a harness defect): after a fenced Node was deleted, two dead nodes of four were a
    # storm for the leader, while the harness still counted five machines.
    assert _details(900866, "not-fenced", "") == []


def test_a_held_operation_past_its_release_goes_on_when_its_node_runs_again() -> None:
    # 900008 (after merging the release steps of issue 15): an inherited proven operation whose
    # pods were already released could no longer be voided, yet the leader kept trying: a
    # livelock at the Node deletion, and the operation never finished.
    assert [v.invariant for v in run_seed(900008).violations] == []


def test_a_first_look_at_a_kubelet_lease_is_no_sign_of_life() -> None:
    # 514: a new leader's first look at a node's kubelet Lease was taken for a renewal after it
    # took the operation over: a proven Off was voided while the machine was off, and the node
    # was never fenced again.
    assert _details(514, "not-fenced", "") == []


def test_a_taint_landing_after_its_operation_was_aborted_does_not_keep_the_node_unfenced() -> None:
    # 901184: a stale leader's out-of-service taint landed after the operation was aborted;
    # the node counted as fenced and kept out of service, and was never fenced when it died.
    assert _details(901184, "not-fenced", "") == []


def test_a_stale_leader_never_finishes_an_operation_another_leader_has_written() -> None:
    # 900149 (issue 20): a leader paused for 35 s woke up, judged the node dead again, found the
    # new leader's record by a fresh list and, its VM check now answered from its caches at
    # once, stored Recovered before its elector noticed the Lease was lost.
    assert _details(900149, "two-leaders", "") == []


# -- the CI budget -----------------------------------------------------------------------------


# About 95 s of CPU since the simulated API serves watches (issue 20; 60-70 s before): on a busy
# machine that is past pytest-timeout's default 120 s, whose signal then lands inside a
# simulated process and is reported as that process's crash.
@pytest.mark.timeout(300)
def test_a_thousand_seeds_break_no_invariant() -> None:
    failing = {}
    for seed in CI_SEEDS:
        result = run_seed(seed)
        if result.violations:
            failing[seed] = sorted({str(v)[:300] for v in result.violations})
    assert failing == {}, (
        f"{len(failing)} seeds break invariants; replay one with"
        f" `nodefence-hwsim simulate --replay SEED -v`: {dict(list(failing.items())[:20])}"
    )


@pytest.mark.parametrize("seed", [900862, 902030, 902369])
def test_a_leader_that_takes_its_own_lease_again_carries_on_the_power_off_it_committed(
    seed: int,
) -> None:
    # The leader declared the node dead and stored powerOffSent, then a pause cost it the
    # Lease before the request went out; it took its own Lease again (same acquisition, so
    # the same Lease term) and, as a new leader side, sent the power-off the record had
    # committed to. The harness took the Lease acquisition as the term whose crossing exempts
    # the walk but the leader side as the term whose declarations count: the two disagreed.
    assert _details(seed, "wrong-fence", "without having declared") == []
