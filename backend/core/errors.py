"""Domain errors. Services raise them; the API turns each into a 4xx with its message."""


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    status_code = 422


class PayloadTooLarge(DomainError):
    status_code = 413


class Forbidden(DomainError):
    status_code = 403


class Unauthorized(DomainError):
    status_code = 401
