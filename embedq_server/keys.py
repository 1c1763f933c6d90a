"""Typed keys for everything the application holds."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from .admission import ADMISSION as ADMISSION
from .auth import TokenSet
from .listener import Listener
from .queue import Queue
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
LISTENER = web.AppKey("listener", Listener)
QUEUE = web.AppKey("queue", Queue)
CLIENT_TOKENS = web.AppKey("client_tokens", TokenSet)
WORKER_TOKENS = web.AppKey("worker_tokens", TokenSet)
DATABASE_URL = web.AppKey("database_url", str)
METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
