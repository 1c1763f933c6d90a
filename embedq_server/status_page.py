"""GET /status: one server-rendered HTML page an operator can open in a browser: the queue per
model and state, throughput over the last hour (an inline SVG chart), live workers and recent
failures. No JavaScript and nothing loaded from elsewhere, so it works behind any firewall.

It shows other people's error messages and worker hosts, so it takes a client token like the
API: `Authorization: Bearer <token>`, or `?token=` for a browser (without a valid one it
answers a small login form with 401). Everything from the database is HTML-escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from .auth import presented_token
from .keys import CLIENT_TOKENS, POOL
from .sql import QUERIES

FAILURES_SHOWN = 20
ERROR_CHARS = 300  # of each failure's message on the page
REFRESH_SECONDS = 15
CHART_WIDTH, CHART_HEIGHT = 720, 180  # pixels
CHART_PAD = 36  # pixels left of the plot, for the axis labels
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")

# The page loads nothing from anywhere (no scripts at all) and is never framed or cached:
# the token may be in its URL.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.muted{color:#666}table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0}
.warn{color:#b45309;font-weight:600}.dead{color:#999}.err{max-width:520px;word-break:break-word}
svg{background:#fff;border:1px solid #ddd}code{font-size:12px}
form{margin-top:16px}input{font:inherit;padding:4px 8px}
"""


def _authorized(request: web.Request) -> bool:
    tokens = request.app[CLIENT_TOKENS]
    if tokens.open_access:
        return True
    token = presented_token(request) or request.query.get("token", "")
    return bool(token) and tokens.matches(token)


def _page(title: str, body: str, *, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def login_form(message: str) -> str:
    return _page(
        "embedq status: sign in",
        "<h1>embedq status</h1>"
        f'<p id="login-message">{html.escape(message)}</p>'
        '<form method="get" action="/status">'
        '<label>Client token <input type="password" name="token" autocomplete="off" '
        "autofocus required></label> <button>Show status</button></form>",
    )


async def status(request: web.Request) -> web.Response:
    if not _authorized(request):
        given = presented_token(request) or request.query.get("token")
        message = "That token is not valid." if given else "Enter a client token."
        return web.Response(
            status=401,
            text=login_form(message),
            content_type="text/html",
            headers={**HEADERS, "WWW-Authenticate": "Bearer"},
        )
    async with request.app[POOL].acquire() as conn:
        queue = await conn.fetch(QUERIES["ops_queue"])
        workers = await conn.fetch(QUERIES["ops_workers"])
        failures = await conn.fetch(QUERIES["ops_recent_failures"], FAILURES_SHOWN)
        throughput = await conn.fetch(QUERIES["ops_throughput"])
    body = render(queue, workers, failures, throughput)
    return web.Response(text=body, content_type="text/html", headers=HEADERS)


# -- rendering ---------------------------------------------------------------------------

E = html.escape


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value is not None else "-"


def render(
    queue: Sequence[asyncpg.Record],
    workers: Sequence[asyncpg.Record],
    failures: Sequence[asyncpg.Record],
    throughput: Sequence[asyncpg.Record],
) -> str:
    alive = [w for w in workers if w["alive"]]
    served = {m for w in alive for m in w["models"]}
    pending = sum(r["items"] for r in queue if r["state"] == "pending")
    processing = sum(r["items"] for r in queue if r["state"] == "processing")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    body = [
        "<h1>embedq status</h1>",
        f'<p class="muted">{E(stamp)}; refreshes every {REFRESH_SECONDS} s. '
        f'<span id="total-pending">{pending}</span> pending, '
        f'<span id="total-processing">{processing}</span> processing, '
        f'<span id="live-workers">{len(alive)}</span> live worker(s).</p>',
        "<h2>Queue</h2>",
        _queue_table(queue, served),
        "<h2>Throughput, last hour</h2>",
        throughput_chart(throughput),
        "<h2>Workers</h2>",
        _workers_table(workers),
        f"<h2>Recent failures (newest {FAILURES_SHOWN})</h2>",
        _failures_table(failures),
    ]
    return _page("embedq status", "".join(body), refresh=True)


def _table(headers: Sequence[str], rows: Sequence[str], table_id: str, empty: str) -> str:
    if not rows:
        return f'<p id="{table_id}" class="muted">{E(empty)}</p>'
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    return f'<table id="{table_id}"><tr>{head}</tr>{"".join(rows)}</table>'


def _queue_table(queue: Sequence[asyncpg.Record], served: set[str]) -> str:
    states = ("pending", "processing", "completed", "failed")
    by_model: dict[str, dict[str, Any]] = {}
    for r in queue:
        entry = by_model.setdefault(r["model"], {"oldest": None})
        entry[r["state"]] = r["items"]
        if r["state"] == "pending":
            entry["oldest"] = r["oldest_pending_seconds"]
    rows = []
    for model, entry in sorted(by_model.items()):
        cells = "".join(
            f'<td class="num" data-model="{E(model)}" data-state="{s}">{entry.get(s, 0)}</td>'
            for s in states
        )
        note = ""
        if entry.get("pending") and model not in served:
            note = ' <span class="warn">no live worker serves this model</span>'
        rows.append(
            f"<tr><td>{E(model)}{note}</td>{cells}"
            f'<td class="num">{E(_age(entry["oldest"]))}</td></tr>'
        )
    headers = ("model", *states, "oldest pending")
    return _table(headers, rows, "queue", "The queue is empty.")


def _workers_table(workers: Sequence[asyncpg.Record]) -> str:
    rows = []
    for w in workers:
        cls = "" if w["alive"] else ' class="dead"'
        rows.append(
            f'<tr{cls} data-worker="{E(w["name"])}"><td>{E(w["name"])}</td>'
            f"<td>{'alive' if w['alive'] else 'gone'}</td>"
            f"<td>{E(', '.join(w['models']))}</td><td>{E(w['backend'] or '-')}</td>"
            f"<td>{E(w['version'] or '-')}</td><td>{E(w['host'] or '-')}</td>"
            f'<td class="num">{w["items_in_hand"]}</td>'
            f"<td>{E(_age(w['seconds_since_seen']))} ago</td></tr>"
        )
    headers = ("name", "state", "models", "backend", "version", "host", "in hand", "last seen")
    return _table(headers, rows, "workers", "No worker has called in yet.")


def _failures_table(failures: Sequence[asyncpg.Record]) -> str:
    rows = []
    for f in failures:
        error = f["error"] or ""
        if len(error) > ERROR_CHARS:
            error = error[:ERROR_CHARS] + "…"
        rows.append(
            f"<tr><td>{E(_when(f['completed_at']))}</td><td>{E(f['model'])}</td>"
            f"<td><code>{E(str(f['task_id']))}</code></td><td>{E(f['error_code'] or '-')}</td>"
            f'<td class="err">{E(error)}</td><td>{E(f["worker"] or "-")}</td>'
            f'<td class="num">{f["attempts"]}</td></tr>'
        )
    headers = ("when", "model", "task", "code", "error", "worker", "attempts")
    return _table(headers, rows, "failures", "No failures.")


def throughput_chart(rows: Sequence[asyncpg.Record]) -> str:
    """One line per model over 60 zero-filled minutes (the view fills the gaps)."""
    series: dict[str, list[int]] = {}
    for r in rows:
        series.setdefault(r["model"], []).append(int(r["completed"]))
    if not series:
        return '<p id="throughput" class="muted">Nothing completed in the last hour.</p>'
    peak = max(max(values) for values in series.values()) or 1
    width, height, pad = CHART_WIDTH, CHART_HEIGHT, CHART_PAD
    plot_w, plot_h, top = width - pad - 10, height - 50, 10  # room below: axis, legend
    parts = [
        f'<svg id="throughput" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
        "<title>Completed inputs per minute over the last hour, by model</title>",
        f'<line x1="{pad}" y1="{top + plot_h}" x2="{pad + plot_w}" y2="{top + plot_h}" '
        'stroke="#999"/>',
        f'<line x1="{pad}" y1="{top}" x2="{pad}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{pad - 4}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{pad - 4}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for label, frac in (("-60 min", 0.0), ("-30 min", 0.5), ("now", 1.0)):
        x = pad + frac * plot_w
        parts.append(
            f'<text x="{x:.0f}" y="{top + plot_h + 14}" text-anchor="middle" '
            f'font-size="11">{label}</text>'
        )
    legend_x = pad
    for n, (model, values) in enumerate(sorted(series.items())):
        color = PALETTE[n % len(PALETTE)]
        step = plot_w / max(len(values) - 1, 1)
        points = " ".join(
            f"{pad + i * step:.1f},{top + plot_h - v / peak * plot_h:.1f}"
            for i, v in enumerate(values)
        )
        total = sum(values)
        parts.append(
            f'<polyline data-model="{E(model)}" data-total="{total}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{points}"/>'
        )
        label = f"{model}: {total} in the hour"
        parts.append(
            f'<text x="{legend_x}" y="{height - 6}" font-size="12" fill="{color}">{E(label)}</text>'
        )
        legend_x += 14 + 7 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def setup(app: web.Application) -> None:
    app.router.add_get("/status", status)
