"""`KubeApiServer`: the store served over real HTTP on a loopback port.

Runs on the caller's asyncio loop (`await start()`) or on its own loop in a background thread
(`start_in_thread()`), which is what the official blocking `kubernetes` client and `kubectl` in a
subprocess need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import threading
from pathlib import Path
from types import TracebackType

import yaml
from aiohttp import web

from nodefence.hwsim.kube.httpapi import ApiHandler
from nodefence.hwsim.kube.request_parsing import Authorizer, RequestRecord
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.writefaults import WriteHook


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KubeApiServer:
    """A stateful Kubernetes API emulator; `url`, `store` and `requests` once started.

    `bookmark_interval` is how often a watch that allows bookmarks gets one; `watch_timeout`
    ends a watch whose client gave no `timeoutSeconds`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: ObjectStore | None = None,
        bookmark_interval: float = 5.0,
        watch_timeout: float = 1800.0,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the hwsim API server listens on loopback only, not {host!r}")
        self.host = host
        self.port = port
        self.store = store if store is not None else ObjectStore()
        self.requests: list[RequestRecord] = []
        self._api = ApiHandler(
            self.store,
            self.requests,
            lambda: f"{self.host}:{self.port}",
            bookmark_interval=bookmark_interval,
            watch_timeout=watch_timeout,
        )
        self.traffic = self._api.traffic  # requests, bytes and watches by client
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`; only meaningful once started."""
        if self._runner is None:
            raise RuntimeError("the API server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def write_hook(self) -> WriteHook | None:
        """Called with every applied write; may return a `WriteFault` to act out before the
        answer (see `nodefence.hwsim.kube.writefaults`). Runs on the server's loop: keep it
        quick."""
        return self._api.write_hook

    @write_hook.setter
    def write_hook(self, hook: WriteHook | None) -> None:
        self._api.write_hook = hook

    @property
    def authorizer(self) -> Authorizer | None:
        """Decides every request before it is served (None: all are); a refusal is a 403 and
        is recorded with that code. Tests plug in RBAC as the rendered manifests grant it."""
        return self._api.authorizer

    @authorizer.setter
    def authorizer(self, decide: Authorizer | None) -> None:
        self._api.authorizer = decide

    def register(self, rt: ResourceType) -> None:
        """Serve another resource type (a CRD-style one also appears as a CRD object)."""
        self.store.register(rt)

    async def start(self) -> None:
        """Listen on the running loop; `port=0` picks a free port (see `url`)."""
        if self._runner is not None:
            raise RuntimeError("the API server is already started")
        runner = web.AppRunner(
            self._api.application(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    def close_watches(self) -> None:
        """End every open watch stream (a server restart, a load balancer's idle timeout): the
        clients must watch again. Safe from any thread."""
        self._api.close_watches()

    async def stop(self) -> None:
        """End open watches and stop listening. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._api.close_watches()
        await runner.cleanup()

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Start on a new event loop in a daemon thread; returns once listening."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="hwsim-kube-api", daemon=True)
        self._thread.start()
        ready.result(timeout)

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with `start_in_thread` and join its thread. Idempotent."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def kubeconfig(self, namespace: str = "default", token: str | None = None) -> dict[str, object]:
        """A kubeconfig (as a dict) with one context pointing at this server; with `token`,
        requests carry it as a bearer token (the emulator records it, see `authorizer`)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hwsim", "cluster": {"server": self.url}}],
            "users": [{"name": "hwsim", "user": {"token": token} if token else {}}],
            "contexts": [
                {
                    "name": "hwsim",
                    "context": {"cluster": "hwsim", "user": "hwsim", "namespace": namespace},
                }
            ],
            "current-context": "hwsim",
        }

    def write_kubeconfig(
        self, path: Path, namespace: str = "default", token: str | None = None
    ) -> None:
        """Write `kubeconfig()` as YAML to `path`, for kubectl and `config.load_kube_config`."""
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace, token), sort_keys=False))

    def __enter__(self) -> KubeApiServer:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
