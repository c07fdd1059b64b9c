"""lowtide's one exception hierarchy.

Every error that can reach a client is a ``LowtideError``; the API renders each one to the
OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}`` in one place
(``lowtide.api.errors``), using the class attributes below.

    LowtideError                      500 server_error (never raised for bad input)
    ├── InvalidRequest                400 invalid_request_error
    │   ├── InvalidValue              400 code=invalid_value
    │   └── InvalidType               400 code=invalid_type
    ├── AuthenticationFailed          401 invalid_request_error, code=invalid_api_key
    ├── NotFound                      404 invalid_request_error
    ├── MethodNotAllowed              405
    ├── QuotaExceeded                 403 code=quota_exceeded
    ├── Conflict                      409
    ├── PayloadTooLarge               413
    ├── UnsupportedMediaType          415
    ├── RateLimited                   429 (carries retry_after seconds)
    ├── ConfigError                   bad configuration, raised at start-up only
    ├── StorageError                  the blob store or database failed
    │   └── StorageFull               no space left: 507 insufficient_storage
    └── BackendError                  raised by a backend adapter, never shown over HTTP
"""

from __future__ import annotations


class LowtideError(Exception):
    """An internal error occurred."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self, message: str | None = None, *, param: str | None = None, code: str | None = None
    ) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.param = param
        if code is not None:
            self.code = code
        super().__init__(self.message)


class InvalidRequest(LowtideError):
    """The request is invalid."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidValue(InvalidRequest):
    """A parameter has an invalid value."""

    code = "invalid_value"


class InvalidType(InvalidRequest):
    """A parameter has the wrong type."""

    code = "invalid_type"


class AuthenticationFailed(LowtideError):
    """Incorrect API key provided."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(LowtideError):
    """Not found."""

    status_code = 404
    error_type = "invalid_request_error"


class MethodNotAllowed(LowtideError):
    """Method not allowed."""

    status_code = 405
    error_type = "invalid_request_error"


class QuotaExceeded(LowtideError):
    """The account's storage quota is used up."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "quota_exceeded"


class Conflict(LowtideError):
    """The request conflicts with the current state of the resource."""

    status_code = 409
    error_type = "invalid_request_error"


class PayloadTooLarge(LowtideError):
    """The request body is too large."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "file_too_large"


class UnsupportedMediaType(LowtideError):
    """Unsupported content type."""

    status_code = 415
    error_type = "invalid_request_error"


class RateLimited(LowtideError):
    """Rate limit reached."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float = 1.0,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after
        self.headers = headers or {}


class ConfigError(LowtideError):
    """The configuration is invalid."""


class StorageError(LowtideError):
    """The storage failed."""


class StorageFull(StorageError):
    """No space is left on the storage; try again later."""

    status_code = 507
    code = "insufficient_storage"


class BackendError(LowtideError):
    """A backend failed."""
