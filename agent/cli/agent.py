"""`nodefence agent` (the node side), `nodefence fencer` (a leader candidate), and
`nodefence status`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
from typing import TextIO

import aiomqtt

from nodefence.agent.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nodefence.agent.cli.options import config_option, output_option
from nodefence.agent.config.agent_file import AgentConfig, BrokerConfig, ConfigError, load_config
from nodefence.agent.config.inventory_file import InventoryError, load_inventory
from nodefence.agent.detection.profiles import ProfileError
from nodefence.agent.heartbeat.codec import valid_name
from nodefence.agent.leader.view_codec import LeaderView, decode, to_json, view_topic
from nodefence.agent.mqtt.client import make_client


def _load_config(path: str, err: TextIO) -> AgentConfig | None:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"nodefence: config error: {e}", file=err)
        return None


def _start_checks(cfg: AgentConfig, err: TextIO) -> bool:
    """What both roles validate before they run; False after printing why."""
    from nodefence.agent.leader.candidate_runner import detection_profile

    try:
        detection_profile(cfg)
    except ProfileError as e:
        print(f"nodefence: config error: {cfg.path}: detection: {e}", file=err)
        return False
    return True


def _setup_logging(args: argparse.Namespace, node: str) -> None:
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s node={node} %(message)s",
    )
    # The Redfish library logs every request at INFO; keep ours readable.
    logging.getLogger("redfish").setLevel(logging.WARNING)


def run_agent_command(args: argparse.Namespace, err: TextIO = sys.stderr) -> int:
    """Validate everything, then run the node side until SIGTERM."""
    cfg = _load_config(args.config, err)
    if cfg is None:
        return EXIT_USAGE
    node = args.node or os.environ.get("NODE_NAME", "")
    if not node or not valid_name(node):
        print(
            "nodefence: give this node's name with --node or $NODE_NAME "
            f"(a DNS-1123 name), got {node!r}",
            file=err,
        )
        return EXIT_USAGE
    if not _start_checks(cfg, err):
        return EXIT_USAGE
    device = cfg.watchdog.device
    if cfg.watchdog.enabled and not os.path.exists(device):
        print(
            f"nodefence: config error: {cfg.path}: field 'watchdog.device': no such device"
            f" {device} (load a watchdog driver, e.g. softdog, or disable watchdog.enabled)",
            file=err,
        )
        return EXIT_USAGE
    from nodefence.agent.config.key_files import node_signer

    _setup_logging(args, node)
    try:
        signer = node_signer(cfg, node)  # made here at the first start
    except ConfigError as e:
        print(f"nodefence: config error: {e}", file=err)
        return EXIT_USAGE
    if signer is None and cfg.auth.key is None and cfg.auth.mode != "off":
        print(
            f"nodefence: config error: {cfg.path}: field 'auth.node_key_file': a node agent"
            " signs with its own key: set node_key_file and fencer_public_keys",
            file=err,
        )
        return EXIT_USAGE
    from nodefence.agent.leader.candidate_runner import run_process
    from nodefence.agent.node.agent_runner import run_agent

    return run_process(lambda stop: run_agent(cfg, node, stop))


def run_fencer_command(args: argparse.Namespace, err: TextIO = sys.stderr) -> int:
    """Validate everything, then run one fencer until SIGTERM."""
    cfg = _load_config(args.config, err)
    if cfg is None:
        return EXIT_USAGE
    from nodefence.agent.leader.fencer_runner import fencer_node

    node = args.node or fencer_node()
    if not valid_name(node):
        print(
            f"nodefence: give the fencer's node with --node (a DNS-1123 name), got {node!r}",
            file=err,
        )
        return EXIT_USAGE
    if not _start_checks(cfg, err):
        return EXIT_USAGE
    if cfg.inventory is not None:
        try:
            load_inventory(cfg.inventory)
        except InventoryError as e:
            print(f"nodefence: inventory error: {e}", file=err)
            return EXIT_USAGE
    from nodefence.agent.config.key_files import fencer_keyring

    try:
        keyring = fencer_keyring(cfg)
    except ConfigError as e:
        print(f"nodefence: config error: {e}", file=err)
        return EXIT_USAGE
    if keyring is None and cfg.auth.key is None and cfg.auth.mode != "off":
        print(
            f"nodefence: config error: {cfg.path}: field 'auth.fencer_key_file': a fencer"
            " checks every node's signature with the fencer key: set fencer_key_file",
            file=err,
        )
        return EXIT_USAGE
    _setup_logging(args, node)
    from nodefence.agent.leader.candidate_runner import run_process
    from nodefence.agent.leader.fencer_runner import run_fencer

    return run_process(lambda stop: run_fencer(cfg, node, stop))


async def _read_view_on(broker: BrokerConfig, cluster: str, wait: float) -> LeaderView | None:
    async with make_client(broker, f"nodefence-status-{os.getpid()}") as client:
        await client.subscribe(view_topic(cluster), qos=0)
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes):
                        return decode(payload)
        except TimeoutError:
            return None
    return None


async def _read_view(cfg: AgentConfig, wait: float) -> LeaderView | None:
    """The leader's view from the first broker that has one (it publishes on every broker it
    reaches); raises the first broker's error when none can be reached."""
    tasks = [asyncio.ensure_future(_read_view_on(b, cfg.cluster, wait)) for b in cfg.brokers]
    errors: list[BaseException] = []
    try:
        for done in asyncio.as_completed(tasks):
            try:
                view = await done
            except aiomqtt.MqttError as e:
                errors.append(e)
                continue
            if view is not None:
                return view
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if len(errors) == len(tasks):
        raise errors[0]
    return None


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print the leader's view (`nodefence.agent.leader.status_view`); 0 when nothing needs anyone,
    1 when someone must act or no current view can be had, 2 on bad input."""
    from nodefence.agent.detection.profiles import profile_from_mapping
    from nodefence.agent.leader.status_view import report

    cfg = _load_config(args.config, err)
    if cfg is None:
        return EXIT_USAGE
    try:
        # `profile: defualt` is an error here as it is for the agent
        profile_from_mapping({"profile": cfg.profile, **cfg.profile_overrides})
    except ProfileError as e:
        print(f"nodefence: config error: {cfg.path}: detection: {e}", file=err)
        return EXIT_USAGE
    try:
        view = asyncio.run(_read_view(cfg, args.wait))
    except aiomqtt.MqttError as e:
        where = ", ".join(b.address for b in cfg.brokers)
        print(f"nodefence: cannot reach any broker ({where}): {e}", file=err)
        return EXIT_FAILED
    except ValueError:
        print("nodefence: the leader's view is not valid JSON", file=err)
        return EXIT_FAILED
    if view is None:
        print(f"nodefence: no leader view within {args.wait:g} s (is an agent leading?)", file=err)
        return EXIT_FAILED
    age = max(0.0, dt.datetime.now().timestamp() - view.published_at)
    said = report(view, age)
    if args.output == "json":
        doc = {
            **to_json(view),
            "viewAge": round(age, 2),
            "stale": said.stale,
            "attention": said.attention,
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        print("\n".join(said.lines), file=out)
    return EXIT_FAILED if said.attention else EXIT_OK


def _role_arguments(role: argparse.ArgumentParser, node_help: str) -> None:
    config_option(role)
    role.add_argument("--node", help=node_help)
    role.add_argument(
        "--log-level",
        default=os.environ.get("NODEFENCE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning"],
        help="default: $NODEFENCE_LOG_LEVEL or info",
    )


def add_agent_arguments(agent: argparse.ArgumentParser) -> None:
    """`nodefence agent`: its arguments."""
    _role_arguments(agent, "this node's name (default: $NODE_NAME, as the DaemonSet sets it)")


def add_fencer_arguments(fencer: argparse.ArgumentParser) -> None:
    """`nodefence fencer`: its arguments."""
    _role_arguments(
        fencer, "the node this fencer runs on (default: $NODE_NAME, else $POD_NAME or the host)"
    )


def add_status_arguments(status: argparse.ArgumentParser) -> None:
    """`nodefence status`: its arguments."""
    status.description = (
        "Print the leader's view (published over MQTT every second): per node its state,"
        " heartbeat and kubelet Lease ages, maintenance, BMC checks and agent version; the"
        " fencing operations with their phase, attempt, last error and the VMs down; a"
        " pause; the inventory; alerts. Exit 0 when nothing needs anyone, 1 when someone"
        " must act (a failed fence, VMs down or left stopped, a dead node held by a pause,"
        " a rejected inventory, an alert that asks for it, a STALE view: its leader is"
        " gone, or no view at all), 2 on bad input."
    )
    config_option(status)
    output_option(status)
    status.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a view")
