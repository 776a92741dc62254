"""Which metrics a PromQL expression reads, and which metrics the service exports.

Good enough for the expressions of our dashboard and alert rules: it drops
string literals, label matchers, range selectors and grouping clauses, and
what is left that is neither a PromQL function nor a keyword is a metric name.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROMQL_WORDS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "limitk",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "atan2",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "deriv",
        "predict_linear",
        "changes",
        "resets",
        "histogram_quantile",
        "histogram_count",
        "histogram_sum",
        "histogram_fraction",
        "histogram_avg",
        "absent",
        "absent_over_time",
        "present_over_time",
        "label_replace",
        "label_join",
        "vector",
        "scalar",
        "time",
        "timestamp",
        "clamp",
        "clamp_min",
        "clamp_max",
        "abs",
        "ceil",
        "floor",
        "round",
        "exp",
        "ln",
        "log2",
        "log10",
        "sqrt",
        "sgn",
        "sort",
        "sort_desc",
        "sort_by_label",
        "sort_by_label_desc",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "quantile_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "hour",
        "minute",
        "month",
        "year",
        "inf",
        "nan",
    }
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:([^,()]+?)\s*,\s*)?[A-Za-z_]\w*\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (Grafana `label_values(m, l)` included)."""
    lv = _LABEL_VALUES.match(expr)
    if lv:
        return metric_names(lv.group(1)) if lv.group(1) else set()
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    return {tok for tok in _IDENT.findall(text) if tok not in PROMQL_WORDS}


def architecture_metrics(path: Path = REPO / "docs" / "architecture.md") -> dict[str, str]:
    """`name -> type` from the metrics table of docs/architecture.md."""
    rows = re.findall(r"^\|\s*`(csipos_[a-z0-9_]+)`\s*\|\s*([a-z]+)", path.read_text(), re.M)
    if not rows:
        raise AssertionError(f"{path}: no metrics table (| `csipos_...` | type | labels |)")
    return dict(rows)


def series_names(metrics: dict[str, str]) -> set[str]:
    """The sample names a set of metrics puts on /metrics (histograms: _bucket/_sum/_count)."""
    out: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out
