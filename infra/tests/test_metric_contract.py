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
    """(metric, dimension names) pairs from the writer's source: the `const NAME: &[Metric]`
    lists, the `directive(&[&[...]], NAME)` calls, and the per-service directive whose metrics
    are the names listed for `service_metrics`."""
    source = METRICS_RS.read_text()
    consts = {
        name: [a or b for a, b in re.findall(r'count\(\s*"(\w+)"\s*\)|name:\s*"(\w+)"', body)]
        for name, body in re.findall(r"const (\w+): &\[Metric\] = &\[(.*?)\];", source, re.S)
    }

    def dimension_sets(text: str) -> list[list[str]]:
        return json.loads(text.replace("&", ""))

    out = set()
    for dims, metrics in re.findall(r"directive\(\s*&(\[.*?\])\s*,\s*(\w+)\s*,?\s*\)", source, re.S):
        for dim_set in dimension_sets(dims):
            out.update((name, frozenset(dim_set)) for name in consts.get(metrics, []))
    service = re.search(r"let service_metrics: Vec<Metric> = \[(.*?)\]\s*\.into_iter", source, re.S)
    service_dims = re.search(r"dimensions:\s*&(\[.*?\])\s*,\s*metrics:\s*Cow::Owned\(service_metrics\)", source, re.S)
    if service and service_dims:
        names = re.findall(r'"(\w+)"\s*\)', service.group(1))
        for dim_set in dimension_sets(service_dims.group(1)):
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
