"""Alembic environment: runs migrations through the async engine on SQLite and PostgreSQL."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from ncpi_workflow.db import create_engine
from ncpi_workflow.models import Base
import ncpi_workflow.users  # noqa: F401,E402 - the web app's accounts live on the same Base (table `users`)

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
