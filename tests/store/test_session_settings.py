"""PostgreSQL sessions end when their Corral process goes silent (a partition must not strand runs).

The end-to-end proof is ``tests/runtime/test_multihost.py``: a worker cut off in the middle of a
checkpoint held its run's row lock for about 15 minutes (the server retransmitting unacknowledged
data; keepalives do not apply then) until ``tcp_user_timeout`` bounded it.
"""

from __future__ import annotations

from sqlalchemy import text

from corral.platform import Platform
from corral.settings import Settings
from corral.store import postgres_session_settings


def test_dead_client_seconds_become_tcp_user_timeout_and_keepalives() -> None:
    assert postgres_session_settings(dead_client_seconds=30) == {
        "tcp_user_timeout": "30000",
        "tcp_keepalives_idle": "15",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }
    # Short bounds keep whole, non-zero seconds (0 would mean "the system default").
    assert postgres_session_settings(dead_client_seconds=1.5) == {
        "tcp_user_timeout": "1500",
        "tcp_keepalives_idle": "1",
        "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": "3",
    }
    assert postgres_session_settings(dead_client_seconds=0) == {}
    assert postgres_session_settings(schema="corral", dead_client_seconds=0) == {
        "search_path": "corral"
    }


async def _shown(platform: Platform, *names: str) -> list[str]:
    async with platform.store.engine.connect() as connection:
        return [(await connection.execute(text(f"SHOW {name}"))).scalar_one() for name in names]


async def test_every_postgresql_session_of_a_platform_carries_them(settings: Settings) -> None:
    settings.store.postgres_dead_client_seconds = 12
    platform = Platform(settings)
    try:
        await platform.start()  # on SQLite too: nothing of this reaches its driver
        if platform.store.dialect != "postgresql":
            async with platform.store.engine.connect() as connection:
                assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            return
        shown = await _shown(platform, "tcp_user_timeout", "tcp_keepalives_idle", "search_path")
        assert shown[:2] == ["12000", "6"]  # milliseconds, seconds
        assert shown[2] == settings.store.postgres_schema  # the schema still applies
    finally:
        await platform.close()


async def test_zero_leaves_the_servers_own_settings(settings: Settings) -> None:
    settings.store.postgres_dead_client_seconds = 0
    platform = Platform(settings)
    try:
        await platform.start()
        if platform.store.dialect != "postgresql":
            assert platform.store.engine.url.get_backend_name() == "sqlite"
            return
        assert await _shown(platform, "tcp_user_timeout") == ["0"]
    finally:
        await platform.close()
