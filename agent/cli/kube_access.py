"""Where the commands that talk to the Kubernetes API find it (as kubectl does), and who they are.

`--kubeconfig`, else the first file of `$KUBECONFIG`, else `~/.kube/config` when it exists,
else the in-cluster service account (inside an agent pod). The leader Lease is
`NAMESPACE/NAME`, `nodefence/nodefence-leader` unless the agents' config says otherwise.
"""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import TextIO

from nodefence.agent.kube.client import ClusterApi, load_api_client

DEFAULT_LEASE = "nodefence/nodefence-leader"


def kubeconfig_path(given: str | None) -> str | None:
    """The kubeconfig file to use (None: the in-cluster account), in kubectl's order."""
    if given:
        return given
    from_env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if from_env:
        return from_env
    home = Path("~/.kube/config").expanduser()
    return str(home) if home.is_file() else None


def kube_api(kubeconfig: str | None, err: TextIO | None) -> ClusterApi | None:
    """An API client, or None after saying on `err` (when given) why there is none."""
    path = kubeconfig_path(kubeconfig)
    try:
        return ClusterApi(load_api_client(path))
    except Exception as e:  # the config loaders raise a zoo: ConfigException, OSError, ...
        if err is not None:
            where = path or "the in-cluster service account (not in a pod?)"
            print(
                f"nodefence: cannot use {where}: {type(e).__name__}: {e}; "
                "pass --kubeconfig or set $KUBECONFIG",
                file=err,
            )
        return None


def split_lease(text: str) -> tuple[str, str] | None:
    """(namespace, name) of `NAMESPACE/NAME`, or None when it is not that."""
    namespace, _, name = text.partition("/")
    return (namespace, name) if namespace and name and "/" not in name else None


def who() -> str:
    """Who runs this command: user@host (in an agent pod: the pod's node)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid {os.getuid()}"
    host = os.environ.get("NODE_NAME") or socket.gethostname()
    return f"{user}@{host}"
