"""The one way nodefence calls the Kubernetes API: a client method in a worker thread, under a
deadline, its failures as `ClusterError` (the subclass its status stands for: `NotFound`,
`Conflict`, ... see `nodefence.agent.kube.errors`). `ClusterApi` and each of its mixins (release,
keys, KubeVirt, watches) build on `ClientBase`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client as k8s

from nodefence.agent.kube.errors import ClusterError, api_error

T = TypeVar("T")


class ClientBase:
    """The typed clients of one `ApiClient` and the deadline-bounded call."""

    def __init__(self, api_client: k8s.ApiClient, timeout: float = 5.0) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.core = k8s.CoreV1Api(api_client)
        self.storage = k8s.StorageV1Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)

    async def _call(
        self, what: str, fn: Callable[[], T], timeout: float | None = None, *, refusal: bool = False
    ) -> T:
        """`fn()` in a worker thread, its failures as `ClusterError` (`api_error`; with
        `refusal`, the message carries the server's reason), within `timeout` (the client's
        deadline by default)."""
        deadline = self.timeout if timeout is None else timeout

        def guarded() -> T:
            try:
                return fn()
            except Exception as err:  # ApiException, urllib3's connection refused, reset, ...
                raise api_error(what, err, refusal=refusal) from None

        try:
            return await asyncio.wait_for(asyncio.to_thread(guarded), deadline)
        except TimeoutError:
            raise ClusterError(f"{what}: no answer within {deadline:g} s") from None

    async def _call_any(self, what: str, fn: Callable[[], Any], *, refusal: bool = False) -> Any:
        """`_call` for client methods typed as returning `object` (custom objects, reads)."""
        return await self._call(what, fn, refusal=refusal)

    async def _call_json(self, what: str, fn: Callable[[], Any]) -> dict[str, Any]:
        """`_call` of a client method called with `_preload_content=False`: the body as
        parsed JSON (no client models: see `nodefence.agent.kube.json_codec`)."""

        def read() -> dict[str, Any]:
            body: dict[str, Any] = json.loads(fn().data)
            return body

        return await self._call(what, read)
