"""Alert webhooks: a signed JSON POST per SLO transition, retried, off the caller's path.

Signature scheme (what a receiver checks):

* ``X-Corral-Timestamp``: the Unix time of the attempt, in whole seconds.
* ``X-Corral-Signature``: ``sha256=<hex>``, the HMAC-SHA256 under the webhook's secret of
  ``f"{timestamp}.".encode() + body`` (the exact bytes of the request body).
* ``X-Corral-Delivery``: the alert's id, the same for every attempt (deduplicate on it).

The receiver recomputes the HMAC over the timestamp header, a dot and the raw body, compares
it in constant time (``hmac.compare_digest``), and refuses a timestamp more than a few minutes
from its clock: a captured request replayed later fails, and the timestamp cannot be changed
without the secret. Each retry is signed again with its own timestamp. (The scheme of Stripe's
``Stripe-Signature``, https://docs.stripe.com/webhooks#verify-manually.)

Webhook URLs come from settings (``CORRAL_ALERTS__WEBHOOKS``), which only the platform's
operator sets: a tenant can neither name a URL nor read a secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from corral.settings import AlertSettings, AlertWebhook

if TYPE_CHECKING:  # httpx and tenacity are imported when an alert is first sent
    import httpx

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSender",
    "sign_webhook",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Corral-Signature"
TIMESTAMP_HEADER: Final = "X-Corral-Timestamp"
DELIVERY_HEADER: Final = "X-Corral-Delivery"


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>`` (see the module docstring).

    Args:
        secret: The webhook's shared secret.
        timestamp: Unix time of the attempt, in whole seconds (the ``X-Corral-Timestamp``).
        body: The exact request body.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class _RetryableStatus(Exception):
    """The receiver answered 5xx: worth another attempt."""


class _Refused(Exception):
    """The receiver answered 4xx: another attempt would be refused too."""


def _retryable(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, _RetryableStatus | httpx.TransportError)


class WebhookSender:
    """Delivers alerts to every configured webhook in background tasks.

    :meth:`send` returns at once; each delivery retries connection errors, timeouts and 5xx
    answers with capped exponential backoff (``alerts.webhook_attempts`` attempts in all) and
    gives up, logged, on a 4xx answer or after the last attempt.

    Args:
        settings: The webhooks and their retry settings.
        clock: Unix time in seconds (the signature's timestamp).
    """

    def __init__(self, settings: AlertSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def send(self, payload: dict[str, Any]) -> None:
        """POST ``payload`` (JSON) to every webhook in the background, with a new delivery id."""
        if not self.settings.webhooks:
            return
        body = json.dumps(
            {"id": uuid.uuid4().hex, **payload}, sort_keys=True, separators=(",", ":")
        ).encode()
        for webhook in self.settings.webhooks:
            task = asyncio.create_task(self.deliver(webhook, body), name="alert webhook")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the deliveries in flight (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def deliver(self, webhook: AlertWebhook, body: bytes) -> bool:
        """POST ``body`` to one webhook, retrying; whether it was accepted (2xx/3xx)."""
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.webhook_attempts),
            wait=wait_exponential(
                multiplier=self.settings.webhook_retry_initial_seconds,
                max=self.settings.webhook_retry_max_seconds,
            ),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        delivery = json.loads(body)["id"]
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(webhook, body, delivery)
        except Exception as exc:
            log.warning(
                "alert webhook %s failed (%s: %s); the alert is in the audit log",
                webhook.url,
                type(exc).__name__,
                exc,
            )
            return False
        return True

    async def _post(self, webhook: AlertWebhook, body: bytes, delivery: str) -> None:
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(webhook.secret.get_secret_value(), timestamp, body),
            DELIVERY_HEADER: delivery,
        }
        response = await self._http().post(webhook.url, content=body, headers=headers)
        if response.status_code >= 500:
            raise _RetryableStatus(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise _Refused(f"HTTP {response.status_code}, not retried; check the receiver")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_seconds, follow_redirects=False
            )
        return self._client

    async def aclose(self) -> None:
        """Cancel deliveries in flight and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
