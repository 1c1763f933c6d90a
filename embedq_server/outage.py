"""What a database outage looks like to the server, shared by the queue and the HTTP layer."""

from __future__ import annotations

import asyncpg

# What asyncpg raises while PostgreSQL restarts or the network drops.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a pool releasing a connection that died mid-operation
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CrashShutdownError,
    ConnectionError,
    OSError,
    TimeoutError,
)


class TaskUnreachable(Exception):
    """The database stayed unreachable while a request waited for its accepted task."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id
