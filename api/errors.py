"""HTTP errors with a stable code, a message and a hint; handlers so nothing leaks a stack trace."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import UserInputError

log = logging.getLogger("nerfserve.api")

# UserInputError codes that are not plain 400s.
CODE_STATUS = {"too_large": 413, "too_many_images": 413, "unsupported_file": 415, "too_many_jobs": 429,
               "zip_too_large": 413, "zip_too_many_members": 413, "zip_ratio_too_high": 413}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint, self.headers = status, code, message, hint, headers


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no such {what} for this API key",
                    f"list yours with GET /v1/{what}s" if what == "job" else "")


def body(code: str, message: str, hint: str = "", **extra) -> dict:
    return {"error": code, "message": message, "hint": hint, **extra}


def _summarise(errors: list) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(body(e.code, e.message, e.hint), status_code=e.status, headers=e.headers)

    @app.exception_handler(UserInputError)
    async def _user_error(_: Request, e: UserInputError) -> JSONResponse:
        return JSONResponse(body(e.code, e.message, e.hint), status_code=CODE_STATUS.get(e.code, 400))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        details = [{"loc": [str(x) for x in d.get("loc", ())], "msg": str(d.get("msg", ""))} for d in errs[:20]]
        return JSONResponse(body("invalid_request", _summarise(errs),
                                 "see the schema at /docs; unknown option names are refused", details=details),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(e.status_code, "http_error")
        return JSONResponse(body(code, str(e.detail)), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error %s", ref)
        return JSONResponse(body("internal_error", f"internal error (reference {ref})",
                                 "retry later; report the reference if it persists"), status_code=500)
