"""The printed side of a run: the scenario table, the targets, the soak and repeat lines."""

from __future__ import annotations

import math
from typing import Any

CPU_COLUMNS = ("server", "worker", "postgres", "double", "load", "proxy", "other")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _row(cells: list[str], widths: list[int]) -> str:
    """The first column left-aligned, the numbers right-aligned."""
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = [_row(header, widths), "  ".join("-" * w for w in widths)]
    lines += [_row(row, widths) for row in rows]
    return "\n".join(lines)


def scenario_table(scenarios: dict[str, dict[str, Any]]) -> str:
    header = [
        "scenario", "via", "clients", "texts/req", "req/s", "texts/s", "ceiling", "% ceil", "% cap",
        "p50 ms", "p99 ms", "errors", "batch", "cpu% " + "/".join(c[:3] for c in CPU_COLUMNS),
        "cpu ms/req srv/pg/wrk",
    ]  # fmt: skip
    rows = []
    for name, r in scenarios.items():
        cpu = r.get("cpu") or {}
        per = r.get("cpu_ms_per_request") or {}
        rows.append(
            [
                name,
                r["via"],
                _fmt(r["clients"]),
                _fmt(r["texts_per_request"]),
                _fmt(r["rps"]),
                _fmt(r["tps"]),
                f"{r['ceiling']:,.0f} (n={r['ceiling_n']})" if r.get("ceiling") else "-",
                _fmt(r.get("ceiling_pct")),
                _fmt(r.get("capacity_pct")),
                _fmt(r["p50_ms"], 2),
                _fmt(r["p99_ms"], 2),
                _fmt(r["errors"]),
                _fmt(r.get("mean_batch")),
                "/".join(f"{cpu.get(c, 0):.0f}" for c in CPU_COLUMNS),
                "/".join(_fmt(per.get(c), 2) for c in ("server", "postgres", "worker")),
            ]
        )
    return _table(header, rows)


def target_table(targets: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["target"],
            t["limit"],
            _fmt(t["measured"], 2),
            {True: "MET", False: "not met", None: "not measured"}[t["met"]],
        ]
        for t in targets
    ]
    return _table(["target", "limit", "measured", "verdict"], rows)


def soak_lines(soak: dict[str, Any] | None) -> str:
    if not soak:
        return "soak: not run"
    parts = []
    for name, growth in soak["kib_per_1000_requests"].items():
        first, last = soak["rss_kib"][name][0], soak["rss_kib"][name][-1]
        parts.append(
            f"{name} RSS {first / 1024:.1f} -> {last / 1024:.1f} MiB, "
            f"{_fmt(growth, 2)} KiB per 1,000 requests in the second half"
        )
    return (
        f"soak: {soak['requests']:,} requests in {soak['seconds']:.0f}s "
        f"({soak['samples']} samples); " + "; ".join(parts)
    )


def repeat_lines(repeat: dict[str, Any] | None) -> str:
    if not repeat:
        return "repeated texts: not run"
    passes = repeat["passes"]
    first = passes["first"]
    out = [f"repeated texts ({repeat['texts']} texts, {repeat['clients']} clients):"]
    for name, p in passes.items():
        speedup = first["seconds"] / p["seconds"] if p["seconds"] else math.nan
        out.append(
            f"  {name:<28} {p['seconds'] * 1000:8.0f} ms  computed {p['computed']:>5}  "
            f"hit rate {_fmt(p['hit_rate_pct'])}%  speed-up x{_fmt(speedup, 2)}"
        )
    return "\n".join(out)


def ideal_line(ideal: dict[str, Any], scenarios: dict[str, dict[str, Any]]) -> str:
    """embedq read against the batchers with nothing in their way (bench/ideal.py)."""
    parts = [
        f"{name} {_fmt(scenarios[name].get('ceiling_pct'))}% of ceiling(32), "
        f"c32 through embedq {_fmt(share)}% of its texts/s"
        for name, share in ideal["c32_share_pct"].items()
        if name in scenarios
    ]
    parts += [
        f"{name} p50 {over:+.2f} ms over direct"
        for name, over in ideal["idle_over_direct_ms"].items()
        if over is not None
    ]
    if ideal["cap16_share_of_ceiling32_pct"] is not None:
        parts.append(
            f"the double kept busy with 16-text calls {ideal['cap16_share_of_ceiling32_pct']:.1f}%"
            " of ceiling(32)"
        )
    return "against an ideal batcher: " + ("; ".join(parts) if parts else "not run")
