"""The HTTP face of the store: Kubernetes REST paths, verbs, watches and Status errors (aiohttp).

Every request is appended to an audit list as a `RequestRecord` (verb, resource, namespace, name,
subresource, response code), so tests can check what a client did, e.g. against RBAC rules.
Every applied write goes to `write_hook` when one is set (`nodefence.hwsim.kube.writefaults`).

What a request says is read by `nodefence.hwsim.kube.request_parsing`; bodies are rendered by
`nodefence.hwsim.kube.representation`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from nodefence.hwsim.kube import discovery, openapi
from nodefence.hwsim.kube.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    Gone,
    InternalError,
    MethodNotAllowed,
    NotFound,
)
from nodefence.hwsim.kube.eviction import evict
from nodefence.hwsim.kube.pods import is_pod
from nodefence.hwsim.kube.representation import represent
from nodefence.hwsim.kube.request_parsing import (
    Authorizer,
    RequestRecord,
    bearer,
    client_of,
    dry_run_asked,
    grace_period,
    number_param,
    quorum_read,
    read_body,
)
from nodefence.hwsim.kube.resources import ResourceType
from nodefence.hwsim.kube.routing import (
    Representation,
    Route,
    negotiate,
    parse_resource_path,
    truthy,
    verb_for,
)
from nodefence.hwsim.kube.store import ObjectStore
from nodefence.hwsim.kube.traffic import Traffic
from nodefence.hwsim.kube.watch import Watcher, WatchEvent
from nodefence.hwsim.kube.writefaults import WRITE_VERBS, AppliedWrite, WriteHook, act_out

Obj = dict[str, Any]
log = logging.getLogger(__name__)


def _json(body: Obj, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


class ApiHandler:
    """The aiohttp request handler; `close_watches()` ends every open watch stream."""

    def __init__(
        self,
        store: ObjectStore,
        requests: list[RequestRecord],
        address: Callable[[], str],
        *,
        bookmark_interval: float,
        watch_timeout: float,
    ) -> None:
        self.store = store
        self.requests = requests
        self._address = address
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self._watchers: set[Watcher] = set()
        self._recorded: set[int] = set()  # requests recorded early (watches, when they open)
        self.write_hook: WriteHook | None = None
        self.authorizer: Authorizer | None = None
        self.traffic = Traffic()

    def application(self) -> web.Application:
        """An aiohttp application routing every path to this handler."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def close_watches(self) -> None:
        """End every watch stream this server has open."""
        for watcher in list(self._watchers):
            watcher.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one request and record it."""
        route = parse_resource_path(request.path)
        verb = (
            verb_for(request.method, route, request.query.get("watch"))
            if route
            else request.method.lower()
        )
        code = 500
        sent = 0
        try:
            if self.authorizer is not None and not self.authorizer(
                self._record_of(request, route, verb, 0)
            ):
                raise Forbidden(f"{bearer(request) or 'anonymous'} may not {verb} {request.path}")
            if route is None:
                response = self._non_resource(request.path)
            else:
                response = await self._resource(request, route, verb)
            code = response.status
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                sent = len(response.body)
            wrote = route is not None and verb in WRITE_VERBS and code < 400
            if wrote and route and not await self._after_write(request, route, verb, response):
                code = 0  # applied, never answered
            return response
        except ApiError as exc:
            code = exc.code
            refused = _json(exc.status(), exc.code)
            sent = len(refused.body) if isinstance(refused.body, bytes) else 0
            return refused
        except Exception as exc:  # a bug here must still answer like an API server, and show
            log.exception("hwsim API server failed on %s %s", request.method, request.path)
            return _json(InternalError(f"hwsim internal error: {exc!r}").status(), 500)
        finally:
            if id(request) in self._recorded:
                self._recorded.discard(id(request))
            else:
                self._record(request, route, verb, code)
                self.traffic.request(
                    client_of(request),
                    verb,
                    bytes_in=request.content_length or 0,
                    bytes_out=sent,
                    quorum=verb == "list" and quorum_read(request),
                )

    async def _after_write(
        self, request: web.Request, route: Route, verb: str, response: web.StreamResponse
    ) -> bool:
        """Offer an applied write to `write_hook`; False when its answer must not be sent."""
        hook = self.write_hook
        if hook is None or not isinstance(response, web.Response):
            return True
        body = json.loads(response.body) if isinstance(response.body, bytes) else {}
        name = route.name or str((body.get("metadata") or {}).get("name") or "")
        applied = AppliedWrite(
            verb, route.group, route.plural, route.namespace or "", name, route.subresource, body
        )
        fault = hook(applied)
        return True if fault is None else await act_out(request, fault)

    def _record(self, request: web.Request, route: Route | None, verb: str, code: int) -> None:
        self.requests.append(self._record_of(request, route, verb, code))

    @staticmethod
    def _record_of(
        request: web.Request, route: Route | None, verb: str, code: int
    ) -> RequestRecord:
        return RequestRecord(
            verb=verb,
            path=request.path,
            group=route.group if route else "",
            version=route.version if route else "",
            resource=route.plural if route else "",
            namespace=(route.namespace or "") if route else "",
            name=route.name if route else "",
            subresource=route.subresource if route else "",
            code=code,
            user_agent=request.headers.get("User-Agent", ""),
            user=bearer(request),
        )

    def _non_resource(self, path: str) -> web.StreamResponse:
        parts = [p for p in path.split("/") if p]
        registry = self.store.registry
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok")
        if parts == ["openapi", "v3"]:
            return _json(openapi.root(registry))
        if parts[:2] == ["openapi", "v3"]:
            return _json(openapi.group_version(registry, "/".join(parts[2:])))
        if parts == ["version"]:
            return _json(discovery.SERVER_VERSION)
        if parts == ["api"]:
            return _json(discovery.api_versions(self._address()))
        if len(parts) == 2 and parts[0] == "api":
            return _json(discovery.resource_list(registry, "", parts[1]))
        if parts == ["apis"]:
            return _json(discovery.api_group_list(registry))
        if len(parts) == 2 and parts[0] == "apis":
            return _json(discovery.group_of(registry, parts[1]))
        if len(parts) == 3 and parts[0] == "apis":
            return _json(discovery.resource_list(registry, parts[1], parts[2]))
        raise NotFound("the server could not find the requested resource")

    async def _resource(self, request: web.Request, route: Route, verb: str) -> web.StreamResponse:
        rt = self.store.registry.get(route.group, route.version, route.plural)
        if route.namespace is not None and not rt.namespaced:
            raise NotFound("the server could not find the requested resource")
        query, ns, name, sub = request.query, route.namespace, route.name, route.subresource
        dry_run = dry_run_asked(query.getall("dryRun", []))
        rep = negotiate(request.headers.get("Accept"))
        if sub and sub != "status" and not (sub == "eviction" and "eviction" in rt.subresources):
            raise NotFound("the server could not find the requested resource")
        if sub == "status" and not rt.status_subresource:
            raise NotFound("the server could not find the requested resource")
        if verb == "get":
            return self._render(rt, self.store.get(rt, name, ns), rep, query)
        if verb == "list":
            found = self.store.list(
                rt,
                ns,
                label_selector=query.get("labelSelector", ""),
                field_selector=query.get("fieldSelector", ""),
                limit=int(number_param(query.get("limit"), "limit")),
                continue_token=query.get("continue", ""),
                served=True,
            )
            # Encoded in a worker thread: a page of thousands of Nodes is megabytes, and this
            # server, like a real one, goes on answering others (Lease renewals) meanwhile.
            body = represent(rt, found, rep, query, self.store.clock)
            encoded = await asyncio.to_thread(json.dumps, body, separators=(",", ":"))
            return web.Response(body=encoded.encode(), content_type="application/json")
        if verb == "watch":
            return await self._watch(request, rt, route, rep)
        body = await read_body(request)
        if verb in ("create", "update") and not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if verb == "create" and sub == "eviction":
            if ns is None:
                raise NotFound("the server could not find the requested resource")
            options = body.get("deleteOptions") or {} if isinstance(body, dict) else {}
            dry_run = dry_run or dry_run_asked(options.get("dryRun") or [])
            return _json(evict(self.store, ns, name, body, dry_run=dry_run), 201)
        if verb == "create":
            if name:
                raise MethodNotAllowed(f"{request.method} is not supported on a named object")
            created = self.store.create(rt, body, ns, dry_run=dry_run)
            return self._render(rt, created, rep, query, 201)
        if verb == "update":
            meta = body.setdefault("metadata", {})
            if meta.setdefault("name", name) != name:
                raise BadRequest(
                    f"the name of the object ({meta['name']}) does not match the name on the URL "
                    f"({name})"
                )
            updated = self.store.update(rt, body, ns, subresource=sub, dry_run=dry_run)
            return self._render(rt, updated, rep, query)
        if verb == "patch":
            patched = self.store.patch(
                rt,
                name,
                body,
                ns,
                patch_type=request.content_type,
                subresource=sub,
                dry_run=dry_run,
            )
            return self._render(rt, patched, rep, query)
        options = body if isinstance(body, dict) else {}
        dry_run = dry_run or dry_run_asked(options.get("dryRun") or [])
        grace = grace_period(options, query)
        if verb == "delete":
            return self._delete(rt, ns, name, options, query, grace, dry_run)
        if verb == "deletecollection":
            gone = self.store.delete_collection(
                rt,
                ns,
                label_selector=query.get("labelSelector", ""),
                field_selector=query.get("fieldSelector", ""),
                grace_period_seconds=grace,
                dry_run=dry_run,
            )
            return _json(gone)
        raise MethodNotAllowed(f"{request.method} is not supported here")

    def _delete(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        options: Obj,
        query: Any,
        grace: int | None,
        dry_run: bool,
    ) -> web.Response:
        result = self.store.delete(
            rt,
            name,
            ns,
            preconditions=options.get("preconditions"),
            propagation_policy=options.get("propagationPolicy") or query.get("propagationPolicy"),
            grace_period_seconds=grace,
            dry_run=dry_run,
        )
        if is_pod(rt):  # the pod registry returns the pod itself (ReturnDeletedObject)
            return _json(result)
        if result["metadata"].get("deletionTimestamp") and result["metadata"].get("finalizers"):
            return _json(result)
        details = {"name": name, "group": rt.group, "kind": rt.plural}
        details["uid"] = result["metadata"]["uid"]
        return _json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        )

    def _render(
        self, rt: ResourceType, body: Obj, rep: Representation, query: Any, status: int = 200
    ) -> web.Response:
        return _json(represent(rt, body, rep, query, self.store.clock), status)

    async def _watch(
        self, request: web.Request, rt: ResourceType, route: Route, rep: Representation
    ) -> web.StreamResponse:
        query = request.query
        fields = query.get("fieldSelector", "")
        if route.name:
            fields = ",".join(f for f in (fields, f"metadata.name={route.name}") if f)
        initial = query.get("sendInitialEvents")
        timeout = number_param(query.get("timeoutSeconds"), "timeoutSeconds") or self.watch_timeout
        allow_bookmarks = truthy(query.get("allowWatchBookmarks"))
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(
                rt,
                route.namespace,
                resource_version=query.get("resourceVersion"),
                label_selector=query.get("labelSelector", ""),
                field_selector=fields,
                allow_bookmarks=allow_bookmarks,
                send_initial_events=None if initial is None else truthy(initial),
            )
        except Gone as exc:
            # As the real server: the watch opens, then says 410 in an ERROR event.
            await response.prepare(request)
            await response.write(self._line(rt, WatchEvent("ERROR", exc.status()), rep, query))
            await response.write_eof()
            return response
        self._watchers.add(watcher)
        client = client_of(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        try:
            await response.prepare(request)
            self._record(request, route, "watch", 200)  # now, not when the stream ends
            self._recorded.add(id(request))
            self.traffic.request(client, "watch")
            while (now := loop.time()) < deadline:
                if allow_bookmarks and now >= next_bookmark:
                    self.store.bookmark(watcher)
                    next_bookmark = now + self.bookmark_interval
                wait = deadline - now
                if allow_bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                event = await watcher.aget(wait)
                if event is not None:
                    line = self._line(rt, event, rep, query)
                    self.traffic.sent(client, len(line))
                    await response.write(line)
                elif watcher.closed:
                    break
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; nothing to tell it
        finally:
            watcher.close()
            if id(request) in self._recorded:
                self.traffic.watch_closed(client)
            self._watchers.discard(watcher)
        return response

    def _line(self, rt: ResourceType, event: WatchEvent, rep: Representation, query: Any) -> bytes:
        obj = event.object
        if event.type not in ("ERROR", "BOOKMARK"):
            obj = represent(rt, obj, rep, query, self.store.clock)
        return (
            json.dumps({"type": event.type, "object": obj}, separators=(",", ":")).encode() + b"\n"
        )
