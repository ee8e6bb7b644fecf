"""Shared by the credential broker's tests: settings with a master key, a started platform."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from corral.platform import Platform
from corral.settings import SecretsSettings, Settings


def policy_document(name: str, cedar: str) -> dict[str, Any]:
    """A Policy document."""
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"description": f"Test policy {name}.", "cedar": cedar},
    }


@pytest.fixture(name="secret_settings")
def secret_settings_fixture(settings: Settings) -> Settings:
    """The parametrised settings with a configured master key (PostgreSQL requires one)."""
    key = SecretStr(base64.b64encode(os.urandom(32)).decode())
    return settings.model_copy(update={"secrets": SecretsSettings(master_key=key)})


@pytest.fixture(name="platform")
async def platform_fixture(secret_settings: Settings) -> AsyncIterator[Platform]:
    """A started platform (no model provider) on the parametrised store."""
    started = Platform(secret_settings)
    await started.start()
    yield started
    await started.close()
