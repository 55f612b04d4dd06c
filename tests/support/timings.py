"""Short timings for end-to-end runs on a simulated cluster: seconds, not the minutes of a
real site, so a whole fencing run fits in a test; one place so every run uses the same."""

from __future__ import annotations

from typing import Any

# Leader election: a Lease of 4 s renewed within 3 s, retried every 0.5 s.
FAST_LEASE: dict[str, Any] = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.5}

# Fencing: recovery verified within 20 s, retries after 1 s, at most 2 s apart.
SHORT_FENCING: dict[str, Any] = {"recovery_timeout": 20, "retry_base": 1, "retry_max": 2}

# A whole run: the Lease above, kubelets renewing every 2 s, machines booting in 1 s, BMCs
# answering a power request within 3 s.
RUN_TIMINGS: dict[str, Any] = {
    **FAST_LEASE,
    "kubelet_lease_interval": 2.0,
    "boot_delay": 1.0,
    "power_timeout": 3.0,
    "fencing": SHORT_FENCING,
}

# The fencing end-to-end cluster: a run as above with BMCs and eight VMs.
FENCING_RUN: dict[str, Any] = {**RUN_TIMINGS, "bmcs": True, "vms": 8}

# Five nodes, five VMs, and one fence at a time (a second waits for the first's slot).
ONE_FENCE_AT_A_TIME: dict[str, Any] = {
    "nodes": 5,
    "vms": 5,
    "fencing": {**SHORT_FENCING, "max_parallel": 1},
}

# Self-fencing: a 2 s watchdog fed every 0.2 s, cut off 2 s after losing broker and API.
WATCHDOG: dict[str, Any] = {
    "timeout": 2.0,
    "cut_off_after": 2.0,
    "feed_interval": 0.2,
    "api_check_interval": 0.5,
}
SELF_FENCE: dict[str, Any] = {**SHORT_FENCING, "self_fence": True, "self_fence_margin": 1.0}
