"""The review web app (FastAPI on Starlette, Jinja2 template, plain JavaScript; no build).

Safety:
- every state-changing request (POST) must carry the per-session token in the
  ``X-Review-Token`` header (the page gets it in a ``<meta>`` tag; another site cannot
  read it), and the Host header must be one the server was started for (no DNS rebinding);
- only files inside the results folder (``/files/...``) and the pixels of the run's own
  input films (by opaque film id) are served; anything else is 404;
- URLs carry opaque ids only, never file names (which may hold a patient's name), so the
  access log holds no patient data either.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.trustedhost import TrustedHostMiddleware

from legalign.pipeline.errors import InputError
from legalign.pipeline.review.service import ReviewService
from legalign.pipeline.review.store import Conflict, ReviewError

HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Review-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def create_app(
    service: ReviewService,
    *,
    token: str | None = None,
    reviewer: str = "",
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The app over one results folder.  ``token``: the session token (random when
    None); ``allowed_hosts``: Host header values accepted (None: any)."""
    token = token or secrets.token_urlsafe(32)
    app = FastAPI(title="legalign review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token
    app.state.service = service
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    root = service.folder.root

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(TOKEN_HEADER, "")
            if not secrets.compare_digest(sent.encode(), token.encode()):
                return JSONResponse({"error": "missing or wrong session token"}, 403)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def leg_or_404(leg_id: str) -> None:
        try:
            service.folder.leg(leg_id)
        except KeyError:
            raise HTTPException(404, "no such leg") from None

    def film_or_404(film_id: str):
        try:
            film = service.folder.film(film_id)
        except KeyError:
            raise HTTPException(404, "no such film") from None
        if film.source is None:
            raise HTTPException(404, f"original film not available: {film.source_note}")
        return film

    @app.get("/")
    def index(request: Request):
        cfg = service.config
        return templates.TemplateResponse(
            request,
            "review.html",
            {
                "token": token,
                "reviewer": reviewer,
                "folder": root.name,
                "reject_reasons": cfg.reject_reasons,
                "has_intervals": service.has_intervals(),
                "n_films": len(service.folder.films),
                "problems": service.folder.problems,
            },
        )

    @app.get("/api/worklist")
    def worklist() -> dict[str, Any]:
        return {"rows": service.worklist(), "has_intervals": service.has_intervals()}

    @app.get("/api/legs/{leg_id}")
    def leg(leg_id: str) -> dict[str, Any]:
        leg_or_404(leg_id)
        return service.leg_view(leg_id)

    @app.get("/api/legs/{leg_id}/history")
    def history(leg_id: str) -> dict[str, Any]:
        leg_or_404(leg_id)
        return {"events": service.store.history(leg_id)}

    @app.post("/api/legs/{leg_id}/recompute")
    async def recompute(leg_id: str, request: Request) -> dict[str, Any]:
        leg_or_404(leg_id)
        body = await _json(request)
        try:
            return service.recompute(leg_id, body.get("points"))
        except (ReviewError, InputError) as exc:
            raise HTTPException(422, str(exc).splitlines()[0]) from None

    @app.post("/api/legs/{leg_id}/change")
    async def change(leg_id: str, request: Request):
        leg_or_404(leg_id)
        body = await _json(request)
        try:
            state = service.change(leg_id, body)
        except Conflict as exc:
            return JSONResponse(
                {"error": "conflict", "message": str(exc), "state": exc.current.to_dict()}, 409
            )
        except (ReviewError, InputError) as exc:
            raise HTTPException(422, str(exc).splitlines()[0]) from None
        return {"state": state.to_dict(), "leg": service.leg_view(leg_id)}

    @app.get("/api/films/{film_id}/preview.png")
    def preview(film_id: str) -> Response:
        film = film_or_404(film_id)
        try:
            data, w, h = service.pixels.preview_png(film_id, film.source)
        except InputError as exc:
            raise HTTPException(422, _without_path(str(exc))) from None
        service.pixels.warm(film_id, film.source)  # zooming in needs the full film next
        return Response(
            data,
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=3600", "X-Preview-Size": f"{w}x{h}"},
        )

    @app.get("/api/films/{film_id}/region.png")
    def region(
        film_id: str,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        w: int,
        h: int,
        lo: float = 0.0,
        hi: float = 1.0,
    ) -> Response:
        film = film_or_404(film_id)
        if x1 <= x0 or y1 <= y0 or w < 1 or h < 1:
            raise HTTPException(422, "empty region")
        if w * h > service.config.viewer.region_max_pixels:
            raise HTTPException(422, "region too large")
        if not (-1.0 <= lo < hi <= 2.0):
            raise HTTPException(422, "window must satisfy -1 <= lo < hi <= 2")
        try:
            data = service.pixels.region_png(
                film_id, film.source, (x0, y0, x1, y1), (w, h), (lo, hi)
            )
        except InputError as exc:
            raise HTTPException(422, _without_path(str(exc))) from None
        return Response(
            data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.get("/files/{rel:path}")
    def results_file(rel: str) -> FileResponse:
        target = safe_results_file(root, rel)
        if target is None:
            raise HTTPException(404, "not found")
        return FileResponse(target)

    return app


def safe_results_file(root: Path, rel: str) -> Path | None:
    """``root/rel`` when it is a regular file inside ``root`` (symbolic links resolved),
    not hidden and not the review database; else None."""
    if not rel or "\x00" in rel or "\\" in rel:
        return None
    parts = Path(rel).parts
    if any(p.startswith(".") for p in parts) or Path(rel).is_absolute():
        return None
    root = root.resolve()
    target = (root / rel).resolve()
    if root not in target.parents or not target.is_file():
        return None
    if target.name.startswith("review.sqlite"):
        return None
    return target


def _without_path(msg: str) -> str:
    """An error line without the file path that starts it (paths stay out of responses)."""
    head, sep, tail = msg.partition(": ")
    return tail if sep and ("/" in head or "\\" in head) else msg


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "body must be a JSON object")
    return body


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
