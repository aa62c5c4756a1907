"""Errors the gateway answers with, all in OpenAI's shape.

::

    GatewayError                 (status, type, code, param)
    ├── InvalidRequest           400 invalid_request_error
    │   ├── RequestTimeout       408 invalid_request_error (headers or body too slow; closes)
    │   ├── PayloadTooLarge      413 invalid_request_error (closes the connection)
    │   └── ClientDisconnected   499 (logged only: the client is gone)
    ├── Unauthorized             401 authentication_error
    ├── Forbidden                403 permission_error
    ├── NotFound                 404 invalid_request_error (code model_not_found, ...)
    ├── MethodNotAllowed         405 invalid_request_error
    ├── RateLimited              429 rate_limit_error
    ├── Overloaded               503 overloaded_error
    ├── UpstreamError            502 upstream_error (connection failures, bad upstream answers)
    └── UpstreamTimeout          504 timeout_error

An upstream failure's ``message`` is generic (no URL, no credentials) and the caller also gets
the call id; its ``detail`` (credentials redacted) goes to the log row and to stderr.

Services raise; the body ``{"error": {"message", "type", "param", "code"}}`` (``code`` a
string or null) is built in one place, `gateway.protocol.errors` (`error_body` here is it).
"""

from __future__ import annotations

from gateway.protocol.errors import ErrorInfo, error_object
from gateway.protocol.errors import error_body as error_body  # re-exported: the one body


class GatewayError(Exception):
    """``message`` goes to the caller; ``detail`` (when set) only to the log and the operator."""

    status = 500
    type = "server_error"
    code: str | None = None
    close_connection = False  # answer with ``connection: close`` (the rest of the request is not read)

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail
        if code is not None:
            self.code = code

    def body(self) -> bytes:
        return error_body(self.message, self.type, param=self.param, code=self.code)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"
    close_connection = True


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"
    close_connection = True


class ClientDisconnected(InvalidRequest):
    status = 499
    type = "client_disconnected"
    code = "client_disconnected"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"


class Overloaded(GatewayError):
    status = 503
    type = "overloaded_error"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


def error_dict(exc: GatewayError) -> ErrorInfo:
    """The ``error`` member of ``exc``'s body."""
    return error_object(exc.message, exc.type, param=exc.param, code=exc.code)["error"]
