"""The answering service's HTTP app: routes, authentication, limits, metrics. Logic lives in `service`.

    uvicorn --factory pipelines.serving.app:app_from_env     (or `pipelines serve`)

Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <api key or JWT>`; a failure
is 401 with `WWW-Authenticate: Bearer` and no detail. Groups come from that identity only: a body
field, filter or query parameter naming `acl` / `groups` / `group` is 400.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from pipelines.serving import schemas, service
from pipelines.serving.auth import Authenticator, AuthFailed, AuthUnavailable, Principal, authenticator_from
from pipelines.serving.feedback import FeedbackReceipt, FeedbackRefused, FeedbackRequest, FeedbackStore
from pipelines.serving.metrics import CONTENT_TYPE, Metrics
from pipelines.settings import Settings

log = logging.getLogger("pipelines.serving.access")
STATIC_DIR = Path(__file__).resolve().parent / "static"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class GroupInjection(Exception):
    """The request tried to name its own groups or ACL."""


class FeedbackDisabled(Exception):
    """The app was created without a feedback store."""


def create_app(settings: Settings, *, champion: Any | None = None, feedback: Any | None = None) -> FastAPI:
    """The app: search-only when `champion` is None; `feedback` (a FeedbackStore) enables /v1/feedback."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from pipelines.knowledge.embedding import Embedder
        from pipelines.knowledge.index import connect

        embedder = Embedder(settings.embedding_model_path, settings.embedding_batch_size)
        embedder.embed_query("warm up")  # the first encode is slow; pay it before the first request
        with connect(settings) as client:
            app.state.runtime = service.Runtime(settings, client, embedder, champion, metrics)
            if champion is not None and hasattr(champion, "start"):
                champion.start()
            try:
                yield
            finally:
                app.state.runtime.queries.close()
                if champion is not None and hasattr(champion, "stop"):
                    champion.stop()

    app = FastAPI(title="Hybrid RAG answering service", version="1", lifespan=lifespan)
    app.state.auth = authenticator_from(settings)
    app.state.metrics = metrics
    app.state.feedback = feedback
    _add_error_handlers(app)
    _add_routes(app)
    if STATIC_DIR.is_dir():
        app.mount("/chat", StaticFiles(directory=STATIC_DIR, html=True), name="chat")
    # Outermost last: metrics see every response, the size limit runs before anything reads the body.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """The app for `uvicorn --factory`: settings from the environment, the registry's champion."""
    from pipelines.settings import get_settings

    settings = get_settings()
    return create_app(settings, champion=_champion_holder(settings), feedback=_feedback_store(settings))


def _champion_holder(settings: Settings) -> Any:
    from pipelines.serving.champion import ChampionHolder

    return ChampionHolder(settings)


def _feedback_store(settings: Settings) -> FeedbackStore:
    return FeedbackStore(settings.feedback_url)


# --- identity --------------------------------------------------------------------------------


def caller(request: Request) -> Principal:
    """The authenticated principal (sync: a JWKS fetch may block, so it runs in the threadpool)."""
    auth: Authenticator = request.app.state.auth
    metrics: Metrics = request.app.state.metrics
    where = f"{request.method} {request.url.path} from {request.client.host if request.client else '?'}"
    try:
        principal = auth.authenticate(request.headers.get("authorization"))
    except AuthFailed as err:
        metrics.auth.labels("-", "denied").inc()
        log.warning("auth denied: %s: %s", where, err)  # the reason, never the token
        raise
    except AuthUnavailable as err:
        metrics.auth.labels("-", "unavailable").inc()
        log.error("auth unavailable: %s: %s", where, err)
        raise
    metrics.auth.labels(principal.method, "allowed").inc()
    log.info(
        "auth allowed: %s: %s via %s, groups %s", where, principal.subject, principal.method, sorted(principal.groups)
    )
    return principal


def no_identity_params(request: Request) -> None:
    """Refuse query parameters that try to state groups or an ACL."""
    found = schemas.identity_names(request.query_params.keys())
    if found:
        raise GroupInjection(f"query parameters {', '.join(found)}: groups come from your credentials")


Caller = Annotated[Principal, Depends(caller)]
PROTECTED = [Depends(caller), Depends(no_identity_params)]


def _runtime(request: Request) -> service.Runtime:
    runtime: service.Runtime = request.app.state.runtime
    return runtime


# --- routes ----------------------------------------------------------------------------------


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    def healthz() -> schemas.Health:
        """Liveness: the process answers."""
        return schemas.Health(status="ok")

    @app.get("/readyz", response_model=schemas.Health, tags=["health"])
    def readyz(request: Request) -> Response:
        """Readiness: Weaviate reachable and (when the service answers) the model loaded."""
        checks = service.readiness(_runtime(request))
        ready = all(v == "ok" for v in checks.values())
        body = schemas.Health(status="ready" if ready else "not ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], dependencies=PROTECTED)
    def metrics_route(request: Request) -> Response:
        """Prometheus metrics (this app's and the process's: champion swaps, GC, CPU)."""
        from prometheus_client import REGISTRY, generate_latest

        return Response(request.app.state.metrics.render() + generate_latest(REGISTRY), media_type=CONTENT_TYPE)

    @app.post("/v1/search", response_model=schemas.SearchResponse, tags=["v1"], dependencies=PROTECTED)
    def search(body: schemas.SearchRequest, principal: Caller, request: Request) -> schemas.SearchResponse:
        """Hybrid search over what the caller's groups may read."""
        return service.search(_runtime(request), principal, body)

    @app.post("/v1/ask", response_model=schemas.AskResponse, tags=["v1"], dependencies=PROTECTED)
    def ask(body: schemas.AskRequest, principal: Caller, request: Request) -> Any:
        """Answer with citations; `stream: true` or `Accept: text/event-stream` streams tokens (SSE)."""
        runtime = _runtime(request)
        if body.stream or "text/event-stream" in request.headers.get("accept", ""):
            events = service.stream_ask(runtime, principal, body)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-store"})
        return service.ask(runtime, principal, body)

    @app.post("/v1/feedback", response_model=FeedbackReceipt, tags=["v1"], dependencies=PROTECTED)
    def feedback(body: FeedbackRequest, principal: Caller, request: Request) -> FeedbackReceipt:
        """Rate an answer (up / down), optionally with a corrected answer; stored for review, never auto-trained."""
        store: FeedbackStore | None = request.app.state.feedback
        if store is None:
            raise FeedbackDisabled("this service stores no feedback")
        receipt: FeedbackReceipt = service.feedback(_runtime(request), principal, body, store)
        return receipt


def _add_error_handlers(app: FastAPI) -> None:
    def unauthorized(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    def unavailable(request: Request, exc: Exception) -> Response:
        messages = {
            AuthUnavailable: "authentication is unavailable",
            service.BackendUnavailable: "the search backend is unavailable",
            service.ModelUnavailable: str(exc),
        }
        return JSONResponse(
            {"detail": messages.get(type(exc), "unavailable")}, status_code=503, headers={"Retry-After": "5"}
        )

    def group_injection(request: Request, exc: Exception) -> Response:
        log.warning("refused %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        # A model without our validator (feedback) still refuses unknown fields: one named like identity is injection.
        injected = [
            e
            for e in errors
            if e.get("type") == schemas.GROUP_INJECTION
            or (e.get("type") == "extra_forbidden" and schemas.identity_names([str(e["loc"][-1])]))
        ]
        if injected:
            message = injected[0]["msg"]
            if injected[0]["type"] == "extra_forbidden":
                message = f"the request body names {injected[0]['loc'][-1]}: groups come from your credentials"
            return group_injection(request, GroupInjection(message))
        # Echoing the input back is unnecessary and would copy whatever was sent into logs and clients.
        slim = [{"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse({"detail": slim}, status_code=422)

    app.add_exception_handler(AuthFailed, unauthorized)
    app.add_exception_handler(AuthUnavailable, unavailable)
    app.add_exception_handler(service.BackendUnavailable, unavailable)
    app.add_exception_handler(service.ModelUnavailable, unavailable)
    app.add_exception_handler(GroupInjection, group_injection)
    app.add_exception_handler(FeedbackRefused, group_injection)  # 400 with its reason (which holds no text)
    app.add_exception_handler(FeedbackDisabled, unavailable)
    app.add_exception_handler(RequestValidationError, invalid)


# --- middleware (plain ASGI: no per-request task, and streaming responses pass straight through) ----


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or by counting a streamed body."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large(send)
            return
        # Read at most max_bytes + 1 before the app runs; the app then replays the buffered body.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send) -> None:
    body = b'{"detail":"request body too large"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Count requests and time them by route template (`/v1/search`, never a raw path with ids)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - started)
