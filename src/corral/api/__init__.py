"""The REST API (FastAPI): thin routes over the domain services."""

from corral.api._errors import STATUS_CODES, status_for
from corral.api._http import http_protocol
from corral.api.app import create_app

__all__ = ["STATUS_CODES", "create_app", "http_protocol", "status_for"]
