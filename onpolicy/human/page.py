"""The labelling page: a FastAPI app over a `LabelDesk`, served by uvicorn in a thread of the job.

Every API call must carry the page's token (header `X-Onpolicy-Token`), printed once, in the page's link, when
the page starts: the link holds it after `#`, which browsers never send to a server, and the page never logs
it. The page itself (`page.html`, static, no build step) holds no data and loads without it.

Everyone with the link is trusted to label, under a name they give; a name is bound to the browser that first
claimed a group under it (`Names`), so no one labels, skips or claims as someone else.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import pathlib
import re
import secrets
import socket
import threading
import time
from typing import Any

from pydantic import BaseModel, Field

from onpolicy.errors import OnpolicyError
from onpolicy.human.desk import LabelDesk, LabelRefused, checked_name
from onpolicy.run.files import NoSpace

PAGE = pathlib.Path(__file__).with_name("page.html")


MAX_BODY_BYTES = 64 * 1024  # a request body: a label is a few hundred bytes
MAX_GROUP_CHARS = 4096  # a group's key (its prompt's id)
MAX_NAMES = 10_000  # names one page binds to a browser (a few hundred bytes each)


class Who(BaseModel):
    labeller: str = Field(max_length=200)
    key: str = Field("", max_length=64)  # the labeller's key on this page (`Names`); none before the first claim


class Given(Who):
    group: str = Field(max_length=MAX_GROUP_CHARS)
    digest: str = Field(max_length=64)
    best: int | None = Field(None, ge=0, le=10_000)
    worst: int | None = Field(None, ge=0, le=10_000)


class Skipped(Who):
    group: str = Field(max_length=MAX_GROUP_CHARS)


class Names:
    """Labellers' names, each bound to the browser that first claimed a group under it: the page hands that
    browser a key of its own (it keeps it in its localStorage), and every later claim, label or skip under the
    name must carry it. The binding lasts as long as the page: a restarted job binds names afresh."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def check(self, labeller: str, key: str, claiming: bool = False) -> str:
        """The key of `labeller`, when `key` is it; for a name no one has used yet, a new key if `claiming` (a
        label or a skip comes after a claim). LabelRefused (403) otherwise, naming only the name given."""
        name = checked_name(labeller)
        with self._lock:
            known = self._keys.get(name)
            if known is None and claiming:
                if len(self._keys) >= MAX_NAMES:
                    raise LabelRefused(f"this page has given out {MAX_NAMES} names; label under one of yours", 403)
                known = self._keys[name] = secrets.token_urlsafe(24)
                return known
        if known is None or not secrets.compare_digest(known.encode(), key.encode()):
            raise LabelRefused(
                f"the name {name!r} is in use on this page from another browser; give another name", status=403
            )
        return known


def build_app(desk: LabelDesk, token: str) -> Any:
    """The page and its API: `GET /api/state`, `POST /api/claim`, `/api/label`, `/api/release`."""
    from fastapi import Depends, FastAPI, Header, HTTPException
    from fastapi.responses import HTMLResponse

    def check_token(x_onpolicy_token: str = Header("")) -> None:
        if not secrets.compare_digest(x_onpolicy_token.encode(), token.encode()):
            raise HTTPException(401, "this page needs its link with the token (printed when the job started it)")

    app = FastAPI(title="onpolicy labels", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyCap, limit=MAX_BODY_BYTES)  # outermost: before the token check reads anything
    guarded = [Depends(check_token)]
    names = Names()
    html = PAGE.read_text(encoding="utf-8")
    headers = _security_headers(html)

    @app.middleware("http")
    async def secure(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.update(headers)
        return response

    def refused(exc: LabelRefused) -> HTTPException:
        return HTTPException(exc.status, str(exc))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return html

    @app.get("/api/state", dependencies=guarded)
    def state(labeller: str = "") -> dict[str, Any]:
        return desk.state(labeller)

    @app.post("/api/claim", dependencies=guarded)
    def claim(who: Who) -> dict[str, Any]:
        try:
            key = names.check(who.labeller, who.key, claiming=True)
            task = desk.claim(who.labeller)
        except LabelRefused as exc:
            raise refused(exc) from None
        return {"task": None if task is None else task.view(), "state": desk.state(who.labeller), "key": key}

    @app.post("/api/label", dependencies=guarded)
    def label(given: Given) -> dict[str, Any]:
        try:
            names.check(given.labeller, given.key)
            desk.submit(given.labeller, given.group, given.digest, given.best, given.worst)
        except LabelRefused as exc:
            raise refused(exc) from None
        except NoSpace as exc:  # the label is not saved: the labeller hears why (507 Insufficient Storage)
            raise HTTPException(507, str(exc)) from None
        return {"state": desk.state(given.labeller)}

    @app.post("/api/release", dependencies=guarded)
    def release(skipped: Skipped) -> dict[str, Any]:
        try:
            names.check(skipped.labeller, skipped.key)
            desk.release(skipped.labeller, skipped.group)
        except LabelRefused as exc:
            raise refused(exc) from None
        return {"state": desk.state(skipped.labeller)}

    return app


class BodyCap:
    """ASGI middleware: a request whose body is over `limit` bytes gets 413 with no more of it read (FastAPI
    reads a whole body before any dependency, the token check included, runs)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.exceptions import HTTPException
        from starlette.responses import PlainTextResponse

        too_large = f"request body over {self.limit} bytes"
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await PlainTextResponse(too_large, 413)(scope, receive, send)
        received = 0

        async def capped_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a chunked body, which says nothing of its length first
                raise HTTPException(413, too_large)  # FastAPI passes it on as the response
            return message

        await self.app(scope, capped_receive, send)


class PageServer:
    """uvicorn serving the page on (host, port) in a daemon thread; port 0 takes a free one."""

    def __init__(self, desk: LabelDesk, host: str, port: int) -> None:
        self.token = secrets.token_urlsafe(18)
        self._app = build_app(desk, self.token)
        self._socket = _bound_socket(host, port)
        self.host = host
        self.port = self._socket.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The page's address, without the token (on every interface: under this machine's name)."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    @property
    def link(self) -> str:
        """The address with the token: the one link that opens the page."""
        return f"{self.address}#token={self.token}"

    def start(self, startup_timeout_s: float = 30.0) -> None:
        import uvicorn

        config = uvicorn.Config(self._app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="onpolicy-label-page", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OnpolicyError(f"the labelling page did not start on {self.address}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._socket.close()


def check_free(host: str, port: int) -> None:
    """Raise `OnpolicyError` when the page could not listen on (host, port) now."""
    _bound_socket(host, port).close()


def _security_headers(page: str) -> dict[str, str]:
    """Headers of every response: the page runs only its own script and style (by hash), talks only to its own
    server, loads nothing else, cannot be framed, and nothing of it is cached."""
    hashes = {
        tag: " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        )
        for tag in ("script", "style")
    }
    return {
        "Content-Security-Policy": f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _bound_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OnpolicyError(
            f"the labelling page cannot listen on {host}:{port} ({exc.strerror}); set the human reward's "
            "port (0: any free one) or host"
        ) from None
    sock.listen(64)
    sock.setblocking(False)
    return sock
