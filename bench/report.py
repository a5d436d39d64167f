"""Medians over rounds, ratios to reference systems, and the Markdown tables.

Every ratio is this system's median divided by the reference's median, for the
same metric. Whether bigger is better depends on the metric (`higher_is_better`
in METRICS); the table headers carry an arrow saying which.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple


class Metric(NamedTuple):
    scenario: str
    key: str
    label: str
    higher_is_better: bool

    @property
    def column(self) -> str:
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"


METRICS = [
    Metric("get", "rps", "GET req/s", True),
    Metric("get", "p99_ms", "GET p99 ms", False),
    Metric("get", "cpu_us_per_req", "GET proxy CPU µs/req", False),
    Metric("bulk", "mb_s", "bulk MB/s", True),
    Metric("bulk", "cpu_s_per_gb", "bulk proxy CPU s/GB", False),
    Metric("connect", "mb_s", "CONNECT MB/s", True),
    Metric("ws-idle", "kib_per_conn", "WS idle KiB/conn", False),
]
REFERENCES = ("nginx", "direct")


def medians(records: list[dict]) -> dict[str, dict[str, float]]:
    """system -> 'scenario.key' -> median over the rounds that produced it without error."""
    values: dict[str, dict[str, list[float]]] = {}
    for record in records:
        if record.get("error"):
            continue
        for metric in METRICS:
            value = record.get(metric.key) if record["scenario"] == metric.scenario else None
            if isinstance(value, (int, float)):
                slot = values.setdefault(record["system"], {}).setdefault(_name(metric), [])
                slot.append(value)
    return {s: {k: statistics.median(v) for k, v in m.items()} for s, m in values.items()}


def spreads(records: list[dict]) -> dict[str, dict[str, list[float]]]:
    """system -> 'scenario.key' -> [min, max] over rounds (how noisy the box was)."""
    out: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for metric in METRICS:
            value = record.get(metric.key) if record["scenario"] == metric.scenario else None
            if isinstance(value, (int, float)) and not record.get("error"):
                lo_hi = out.setdefault(record["system"], {}).setdefault(
                    _name(metric), [value, value]
                )
                lo_hi[0], lo_hi[1] = min(lo_hi[0], value), max(lo_hi[1], value)
    return out


def ratios(med: dict[str, dict[str, float]], reference: str) -> dict[str, dict[str, float]]:
    ref = med.get(reference, {})
    return {
        system: {k: v / ref[k] for k, v in values.items() if ref.get(k)}
        for system, values in med.items()
    }


def markdown(records: list[dict], systems: list[str], scenarios: list[str], rounds: int) -> str:
    med = medians(records)
    cols = [m for m in METRICS if m.scenario in scenarios]
    failed = {(r["system"], r["scenario"]) for r in records if r.get("error")}
    lines = [f"Medians over {rounds} round(s); (!) = a round failed, see the JSON.", ""]
    lines += _table(
        ["system", *[m.column for m in cols]],
        [
            [
                s,
                *[
                    _fmt(med.get(s, {}).get(_name(m)))
                    + (" (!)" if (s, m.scenario) in failed else "")
                    for m in cols
                ],
            ]
            for s in systems
        ],
    )
    spread = spreads(records)
    if rounds > 1:
        lines += ["", "Spread (min..max over rounds):", ""]
        lines += _table(
            ["system", *[m.column for m in cols]],
            [[s, *[_range(spread.get(s, {}).get(_name(m))) for m in cols]] for s in systems],
        )
    for reference in REFERENCES:
        if reference in med:
            rel = ratios(med, reference)
            lines += [
                "",
                f"Ratio to {reference} (median / {reference}'s median;"
                " ↑ columns: >1 is better, ↓: <1):",
                "",
            ]
            lines += _table(
                ["system", *[m.column for m in cols]],
                [[s, *[_ratio(rel.get(s, {}).get(_name(m))) for m in cols]] for s in systems],
            )
    return "\n".join(lines) + "\n"


def _name(metric: Metric) -> str:
    return f"{metric.scenario}.{metric.key}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _range(lo_hi) -> str:
    return "-" if not lo_hi else f"{_fmt(lo_hi[0])}..{_fmt(lo_hi[1])}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
