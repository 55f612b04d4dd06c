"""The Redfish transport: the DMTF library's requests session, bounded and direct.

`RedfishConnection` wraps one library client: our bounded adapter (answers over
`MAX_ANSWER_BYTES` refused, the moment an answer's headers arrive noted), no proxies or netrc
from the environment, and a logout that always closes the sockets. `ca_bundle` says which CAs a
BMC's certificate is checked against. See `backends/redfish/backend.py` for why each default is
changed.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from nodefence.backends.redfish.model import Json
from nodefence.backends.spec import RedfishDevice

T = TypeVar("T")

# Far above any real resource (a system is a few kB, a collection of thousands of members a
# few hundred kB), far below what would hurt the agent's memory.
MAX_ANSWER_BYTES = 4 << 20

log = logging.getLogger("nodefence.backends.redfish")


class _NoLibraryDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("redfish.rest.v1").addFilter(_NoLibraryDebug())


def ca_bundle(spec: RedfishDevice) -> str | None:
    """The CA file the BMC's certificate is verified with; `None` only for plain HTTP or
    `ssl_insecure` (the library then skips verification)."""
    if spec.scheme != "https" or spec.ssl_insecure:
        return None
    if spec.ca_file:
        return spec.ca_file
    system = ssl.get_default_verify_paths().cafile  # honours SSL_CERT_FILE
    return system if system and os.path.isfile(system) else DEFAULT_CA_BUNDLE_PATH


def innermost(exc: BaseException) -> BaseException:
    """The root of a requests/urllib3 wrapping chain (MaxRetryError.reason, args, __cause__)."""
    seen = {id(exc)}
    while True:
        candidates = (getattr(exc, "reason", None), *exc.args, exc.__cause__)
        nxt = next((c for c in candidates if isinstance(c, BaseException)), None)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def error_text(resp: Any) -> str:
    """The first human message of a Redfish error body, if there is one."""
    try:
        err = resp.dict.get("error", {})
        infos = err.get("@Message.ExtendedInfo") or []
        text = (infos[0].get("Message") if infos else None) or err.get("message") or ""
    except Exception:  # any shape at all may come back from a failing BMC
        return ""
    return str(text)[:200]


class AnswerTooLarge(requests.exceptions.RequestException):
    """The BMC's answer is larger than `MAX_ANSWER_BYTES`; it was not read to the end."""


class AnswerTruncated(requests.exceptions.RequestException):
    """The BMC closed the connection before the end of its answer (short of Content-Length)."""


class BoundedAdapter(HTTPAdapter):
    """requests' transport, reading at most `limit` bytes of any answer into memory.

    `heard()` is called as soon as an answer's status line and headers are in: from then on
    the BMC has answered, whatever happens to the rest of the answer.
    """

    def __init__(self, limit: int, heard: Callable[[], None]) -> None:
        super().__init__(max_retries=0)
        self.limit = limit
        self._heard = heard

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        # `stream` is ignored on purpose: the body is always read here, bounded.
        resp = super().send(request, stream=True, **kwargs)
        self._heard()
        declared = resp.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > self.limit:
            resp.close()
            raise AnswerTooLarge(
                f"the answer announces {int(declared)} bytes, over the {self.limit}-byte limit",
                request=request,
            )
        try:
            body = resp.raw.read(self.limit + 1, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as exc:
            resp.close()
            raise requests.exceptions.ReadTimeout(exc, request=request) from exc
        except urllib3.exceptions.IncompleteRead as exc:
            resp.close()
            raise AnswerTruncated(f"the answer was cut short ({exc})", request=request) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The status line and headers came: a reset or broken stream now is an answer
            # cut short, not a BMC that never answered.
            resp.close()
            raise AnswerTruncated(
                f"the answer was cut short ({type(exc).__name__})", request=request
            ) from exc
        if len(body) > self.limit:
            resp.close()
            raise AnswerTooLarge(f"the answer is over the {self.limit}-byte limit", request=request)
        resp._content = body
        resp._content_consumed = True  # type: ignore[attr-defined]
        resp.raw.release_conn()
        return resp


class RedfishConnection:
    """One library client and what was learned through it (auth mode, root, system URI).

    Used by one call at a time. After a deadline overrun the backend abandons it: the thread
    still running in it logs out when it finishes, so no session is left open on the BMC.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        # The library's requests session (a private attribute): we tune it and make sure it is
        # closed even when logout fails half-way.
        session = getattr(client, "_session", None)
        self.http = session if isinstance(session, requests.Session) else None
        if self.http is not None:
            self.http.trust_env = False
            adapter = BoundedAdapter(MAX_ANSWER_BYTES, self.heard_from_bmc)
            self.http.mount("https://", adapter)
            self.http.mount("http://", adapter)
        self.auth: Literal["session", "basic"] | None = None
        self.root: Json | None = None
        self.system_uri: str | None = None
        self.answers = 0  # HTTP answers (status lines) received during the current call
        self._guard = threading.Lock()
        self._busy = False
        self._abandoned = False

    def heard_from_bmc(self) -> None:
        """An answer's status line arrived (called from the transport)."""
        self.answers += 1

    def run(self, fn: Callable[[], T]) -> T:
        with self._guard:
            self._busy = True
        self.answers = 0
        try:
            return fn()
        finally:
            with self._guard:
                self._busy = False
                abandoned = self._abandoned
            if abandoned:
                self.logout()

    @property
    def busy(self) -> bool:
        with self._guard:
            return self._busy

    def abandon(self) -> None:
        with self._guard:
            self._abandoned = True
            busy = self._busy
        if not busy:
            threading.Thread(target=self.logout, name="redfish-logout", daemon=True).start()

    def logout(self) -> None:
        """End the session on the BMC and close the sockets; best effort, never raises."""
        try:
            self.client.logout()
        except Exception as exc:  # the client is thrown away either way
            log.debug("redfish logout failed: %s", type(exc).__name__)
        finally:
            if self.http is not None:
                self.http.close()
