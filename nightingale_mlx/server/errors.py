"""Every error as OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`: clients
show the message; a traceback never leaves the server (it is logged there instead)."""

import logging
from typing import Optional

log = logging.getLogger("nightingale_mlx.server")

TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An HTTP error with a one-line message for the client."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, " ".join(message.split()), param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def from_generation(e: BaseException) -> APIError:
    """An error raised while the model worked: the model's own ValueErrors are the caller's input."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ValueError):
        return APIError(400, one_line(e))
    log.error("generation failed", exc_info=e)
    return APIError(500, f"the model failed ({type(e).__name__}: {one_line(e)}); see the server's log")


def install(app) -> None:
    """Handlers that turn FastAPI's and Starlette's errors into the OpenAI shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        # OpenAI answers a bad field with 400 (FastAPI's default is 422), naming the field.
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return respond(APIError(400, "the request body is not valid JSON", code="invalid_json"))
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None  # loc[0] is "body"
        message = first.get("msg", "invalid request")
        code = {"string_too_long": "string_above_max_length"}.get(first.get("type"), first.get("type"))
        return respond(APIError(400, f"{param}: {message}" if param else message, param=param, code=code))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return respond(APIError(exc.status_code, message, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(APIError(500, f"internal error ({type(exc).__name__}); see the server's log"))
