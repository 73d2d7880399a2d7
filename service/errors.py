"""The service's errors: every answer other than 200 is JSON, ``{"status", "error", "message"}``, never a trace."""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ctl.serve")


class ApiError(Exception):
    """An answer other than 200: its status, a message naming the problem, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"status": status, "error": HTTPStatus(status).phrase, "message": message, **extra},
                        status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad parameter, what it should be and what came."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "header"))
        got = f" (got {err['input']!r})" if err.get("type") != "missing" and "input" in err else ""
        hint = (" (send the scene as the multipart/form-data field 'image')"
                if where == "image" and err.get("type") == "missing" else "")
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}{got}{hint}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """JSON for our own refusals, bad parameters, unknown routes and methods, and anything unexpected."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = (f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404
                   and exc.detail == "Not Found" else str(exc.detail))
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error (the server log has the details)")
