"""Options several `nodefence` commands share: where the config, inventory and cluster are."""

from __future__ import annotations

import argparse
import os

# Where the DaemonSet mounts them (deploy/base/agent-daemonset.yaml).
POD_CONFIG = "/etc/nodefence/config/agent.yaml"
POD_INVENTORY = "/etc/nodefence/inventory/inventory.yaml"
KUBECONFIG_HELP = (
    "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster account)"
)
LEASE_HELP = "the agents' leader Lease (kubernetes.namespace/lease_name of their config)"
VIRT_HELP = (
    "the VM APIs: auto (every one the cluster serves), deckhouse (virtualization."
    "deckhouse.io) or kubevirt (kubevirt.io); default auto"
)


def config_option(parser: argparse.ArgumentParser) -> None:
    """`--config/-c`: the agent config (in a pod: where the DaemonSet mounts it)."""
    default = os.environ.get("NODEFENCE_CONFIG") or POD_CONFIG
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help=f"agent config YAML file (default: $NODEFENCE_CONFIG, else {POD_CONFIG})",
    )


def inventory_option(parser: argparse.ArgumentParser) -> None:
    """`--inventory/-i`: the BMC inventory (in a pod: where the DaemonSet mounts it)."""
    default = os.environ.get("NODEFENCE_INVENTORY") or POD_INVENTORY
    parser.add_argument(
        "--inventory",
        "-i",
        default=default,
        help=f"BMC inventory YAML file (default: $NODEFENCE_INVENTORY, else {POD_INVENTORY})",
    )


def kubeconfig_option(parser: argparse.ArgumentParser) -> None:
    """`--kubeconfig`, found as kubectl finds it when not given."""
    parser.add_argument("--kubeconfig", help=KUBECONFIG_HELP)


def records_namespace_option(parser: argparse.ArgumentParser) -> None:
    """`-n/--namespace` of the FenceOperation records."""
    parser.add_argument(
        "-n", "--namespace", default="nodefence", help="where the records live (nodefence)"
    )


def output_option(parser: argparse.ArgumentParser) -> None:
    """`-o/--output text|json`."""
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
