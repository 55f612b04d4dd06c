"""`nodefence pause --reason ...` and `nodefence resume`: the cluster-wide pause switch.

Writes (or removes) the annotation `nodefence.io/paused` on the leader Lease
(`nodefence.agent.fencing.pause`); the leader reads it at its next Lease renewal (every
`kubernetes.retry_period`, 1 s). Exit codes: 0 done (also a resume when nothing was paused), 1 the
API refused or failed, 2 bad input (no such Lease, an empty reason).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import TextIO

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.kube_access import kube_api, split_lease, who
from nodefence.agent.cli.options import LEASE_HELP, kubeconfig_option
from nodefence.agent.fencing.pause import MAX_REASON, PAUSE_ANNOTATION, Pause
from nodefence.agent.kube.client import ClusterApi, ClusterError, Forbidden


async def switch(
    api: ClusterApi, namespace: str, name: str, pause: Pause | None, out: TextIO, err: TextIO
) -> int:
    """Write (or with None remove) the pause on the Lease and say what it means; the exit code.
    An account that may not change the Lease (an agent pod's) is told whose to use."""
    try:
        return await _switch(api, namespace, name, pause, out, err)
    except Forbidden as e:
        print(
            f"nodefence: your account may not change the Lease {namespace}/{name} ({e}): run"
            " pause and resume with your own kubeconfig (--kubeconfig, $KUBECONFIG or"
            " ~/.kube/config), not in an agent pod, whose account may only read and renew it",
            file=err,
        )
        return EXIT_FAILED


async def _switch(
    api: ClusterApi, namespace: str, name: str, pause: Pause | None, out: TextIO, err: TextIO
) -> int:
    lease = await api.get_lease(namespace, name)
    if lease is None:
        print(
            f"nodefence: no Lease {namespace}/{name}: is nodefence running there? (--lease"
            " NAMESPACE/NAME: the agents' kubernetes.namespace and lease_name)",
            file=err,
        )
        return EXIT_USAGE
    before = Pause.parse(lease.paused)
    leader = lease.holder or "no leader right now"
    if pause is None:
        if before is None:
            print("fencing was not paused: nothing to resume", file=out)
            return EXIT_OK
        await api.annotate_lease(namespace, name, PAUSE_ANNOTATION, None)
        print(
            f"fencing resumed (it was {before.describe()}); the leader ({leader}) fences dead"
            " nodes again from its next Lease renewal, within about a second",
            file=out,
        )
        return EXIT_OK
    await api.annotate_lease(namespace, name, PAUSE_ANNOTATION, pause.annotation())
    if before is not None:
        print(f"(it was already {before.describe()})", file=out)
    print(
        f"fencing {pause.describe()}\nThe leader ({leader}) reads it at its next Lease renewal"
        " (within about a second) and keeps judging, reporting and alerting, but powers"
        " nobody off; a fence whose Off is already proven finishes its cleanup.\n"
        "`nodefence status` shows PAUSED; `nodefence resume` ends it.",
        file=out,
    )
    return EXIT_OK


def run_pause(
    args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`nodefence pause` (args.command "pause") or `nodefence resume`."""
    lease = split_lease(str(args.lease))
    if lease is None:
        print(f"nodefence: --lease must be NAMESPACE/NAME, got {args.lease!r}", file=err)
        return EXIT_USAGE
    pause = None
    if args.command == "pause":
        reason = " ".join(str(args.reason).split())
        if not reason:
            print("nodefence: --reason must say why (it is shown to everyone)", file=err)
            return EXIT_USAGE
        if len(reason) > MAX_REASON:
            print(f"nodefence: --reason is longer than {MAX_REASON} characters", file=err)
            return EXIT_USAGE
        since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pause = Pause(reason, who(), since)
    api = kube_api(args.kubeconfig, err)
    if api is None:
        return EXIT_USAGE
    try:
        return asyncio.run(switch(api, lease[0], lease[1], pause, out, err))
    except ClusterError as e:
        print(f"nodefence: {e}", file=err)
        return EXIT_FAILED


def add_pause_arguments(pause: argparse.ArgumentParser) -> None:
    """`nodefence pause --reason ...`: its arguments."""
    pause.description = (
        "Pause fencing in the whole cluster (per node: `maintenance`). The leader keeps"
        " detecting, reporting and alerting, and powers nobody off until `nodefence"
        " resume`; a fence whose Off is proven finishes its cleanup. Stored as the"
        " annotation nodefence.io/paused on the leader Lease: it outlives any leader."
    )
    pause.add_argument("--reason", required=True, help="why (shown by status and alerts)")
    add_resume_arguments(pause)


def add_resume_arguments(resume: argparse.ArgumentParser) -> None:
    """`nodefence resume`: its arguments."""
    resume.add_argument("--lease", default="nodefence/nodefence-leader", help=LEASE_HELP)
    kubeconfig_option(resume)
