"""Alembic environment: runs on the connection Corral passes in ``config.attributes``."""

from alembic import context

import corral.store._tables  # noqa: F401  (registers every table on Base.metadata)
from corral.store._base import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
