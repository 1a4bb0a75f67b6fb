"""The alarms and the dashboard read metrics the functions must write: every (metric,
dimension set) an alarm uses is one the shared crate's EMF writer declares
(shared/src/audit/metrics.rs). Alarms cannot search, so a missing dimension set would leave an
alarm silently without data."""

from __future__ import annotations

import json
import re

from conftest import ROOT

METRICS_RS = ROOT / "shared" / "src" / "audit" / "metrics.rs"


def declared() -> set[tuple[str, frozenset[str]]]:
    """(metric, dimension names) pairs from the `directive(json!([[...]]), &[...])` calls."""
    source = METRICS_RS.read_text()
    pushed = re.findall(r'service_metrics\.push\(\(\s*"(\w+)"', source)
    out = set()
    for dims, metrics in re.findall(r"directive\(\s*json!\((\[\[.*?\]\])\)\s*,\s*&(\[.*?\]|service_metrics)\s*,?\s*\)", source, re.S):
        names = pushed if metrics == "service_metrics" else re.findall(r'\(\s*"(\w+)"\s*,', metrics)
        for dim_set in json.loads(dims):
            out.update((name, frozenset(dim_set)) for name in names)
    return out


def used_by_dashboard(resources) -> set[tuple[str, frozenset[str]]]:
    """Plain metric rows `[namespace, name, dim, value, ..., {options}]` (SEARCH rows excluded)."""
    body = json.loads(resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    used = set()
    for widget in body["widgets"]:
        for row in widget["properties"].get("metrics", []):
            if row and row[0] == "Tollgate":
                plain = [x for x in row if isinstance(x, str)]
                used.add((plain[1], frozenset(plain[2::2])))
    return used


def used_by_alarms(resources) -> set[tuple[str, frozenset[str]]]:
    used = set()
    for res in resources.values():
        if res["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = res["Properties"]
        stats = [props] if "MetricName" in props else [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
        for stat in stats:
            if stat["Namespace"] == "Tollgate":
                used.add((stat["MetricName"], frozenset(d["Name"] for d in stat["Dimensions"])))
    return used


def test_every_alarm_and_dashboard_metric_is_written_with_its_dimension_set(resources):
    assert METRICS_RS.exists(), f"the EMF writer moved: update METRICS_RS ({METRICS_RS})"
    written = declared()
    assert written, "could not read the EMF directives in shared/src/audit/metrics.rs: update declared() here"
    missing = (used_by_alarms(resources) | used_by_dashboard(resources)) - written
    assert not missing, f"alarms use metrics the functions do not write: {sorted((m, sorted(d)) for m, d in missing)}"
