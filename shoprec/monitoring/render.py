"""The report on disk: ``report.json`` (the typed report), ``index.html`` (tables, the plots,
the broken thresholds) and one PNG per plot, in the report's folder.

Plots are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas, no pyplot state), so
a report renders in a task or a thread without a display.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shoprec.durable import write_bytes_atomically, write_text_atomically
from shoprec.monitoring.report import Distribution, Freshness, InputDrift, ModelQuality, MonitoringReport

PLOTS = ("event_mix", "item_popularity", "freshness", "online_ctr", "offline_metrics")
OFFLINE_METRICS = ("NDCG@10", "HR@10")  # the registry's headline metrics (training.metrics)


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    html: Path
    json: Path
    plots: list[Path]

    def to_dict(self) -> dict:
        return {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in asdict(self).items()}


def write_report(report: MonitoringReport, folder: Path) -> ReportFiles:
    """Write the report's JSON, PNGs and HTML into ``folder`` (a re-run replaces them)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = [_save(DRAW[name], report, folder / f"{name}.png") for name in PLOTS]
    json_path = folder / "report.json"
    write_text_atomically(json_path, json.dumps(report.to_dict(), indent=2))
    html_path = folder / "index.html"
    write_text_atomically(html_path, page(report, [p.name for p in plots]))
    return ReportFiles(folder, html_path, json_path, plots)


def _save(draw: Callable[[Figure, MonitoringReport], None], report: MonitoringReport, path: Path) -> Path:
    figure = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure, report)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=96)
    return write_bytes_atomically(path, png.getvalue())  # a re-run never leaves a half-drawn plot


# --- the plots ------------------------------------------------------------------------------


def _bars(figure: Figure, dist: Distribution, title: str, log: bool = False) -> None:
    ax = figure.subplots()
    x = range(len(dist.labels))
    ax.bar([i - 0.2 for i in x], dist.reference, width=0.4, label="reference")
    ax.bar([i + 0.2 for i in x], dist.current, width=0.4, label="day")
    ax.set_title(title)
    ax.set_ylabel("share")
    if len(dist.labels) <= 12:
        ax.set_xticks(list(x), dist.labels, rotation=30, ha="right")
    else:
        ax.set_xlabel("items by reference rank (last: the rest)")
    if log and any(v > 0 for v in dist.reference + dist.current):
        ax.set_yscale("log")
    ax.legend()


def _event_mix(figure: Figure, report: MonitoringReport) -> None:
    _bars(figure, report.drift.event_mix, f"Event-type mix (JS divergence {_num(report.drift.event_mix_js)})")


def _item_popularity(figure: Figure, report: MonitoringReport) -> None:
    d = report.drift
    _bars(figure, d.item_popularity, f"Item popularity, reference top {len(d.item_popularity.labels) - 1} + rest "
          f"(PSI {_num(d.item_psi)}, JS {_num(d.item_js)})", log=True)


def _freshness(figure: Figure, report: MonitoringReport) -> None:
    ax = figure.subplots()
    f = report.freshness
    if f.ages_hours:
        ax.hist(f.ages_hours, bins=30)
    else:
        ax.text(0.5, 0.5, f.error or "no online rows read", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"Age of online rows, {f.sampled_users} sampled users ({f.without_row} without a row)")
    ax.set_xlabel("hours since the row's newest event")
    ax.set_ylabel("users")


def _online_ctr(figure: Figure, report: MonitoringReport) -> None:
    ax = figure.subplots()
    versions = sorted({v.model_version for v in report.quality.online})
    for version in versions:
        days = [v for v in report.quality.online if v.model_version == version]
        ax.plot([v.day for v in days], [v.ctr for v in days], marker="o", label=version)
    if versions:
        ax.legend(fontsize="small")
        ax.tick_params(axis="x", labelrotation=30)
    else:
        ax.text(0.5, 0.5, "no impressions logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Online CTR per model version (impressions with a click on a shown item)")
    ax.set_ylabel("CTR")


def _offline_metrics(figure: Figure, report: MonitoringReport) -> None:
    ax = figure.subplots()
    versions = [v for v in report.quality.offline if any(m in v.metrics for m in OFFLINE_METRICS)]
    for shift, metric in zip((-0.2, 0.2), OFFLINE_METRICS):
        ax.bar([i + shift for i in range(len(versions))], [v.metrics.get(metric, 0.0) for v in versions],
               width=0.4, label=metric)
    if versions:
        ax.set_xticks(range(len(versions)), [v.version + (" *" if v.production else "") for v in versions],
                      rotation=30, ha="right", fontsize="small")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no evaluated model versions", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Offline metrics per model version (* production)")


DRAW = {"event_mix": _event_mix, "item_popularity": _item_popularity, "freshness": _freshness,
        "online_ctr": _online_ctr, "offline_metrics": _offline_metrics}


# --- the page -------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pairs(pairs: list[tuple[str, object]]) -> str:
    """A two-column table body: a header cell and a value per row."""
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _drift_table(d: InputDrift) -> str:
    return "<table>" + _pairs([
        ("events of the day", d.events), ("events of the reference days", d.reference_events), ("users of the day", d.users),
        ("event-type mix JS divergence", _num(d.event_mix_js)), ("item popularity PSI", _num(d.item_psi)),
        ("item popularity JS divergence", _num(d.item_js)), ("share of events on unknown items", _num(d.unknown_item_share)),
        ("share of users unknown to the model", _num(d.unknown_user_share))]) + "</table>"


def _freshness_table(f: Freshness) -> str:
    return "<table>" + _pairs([
        ("sampled users", f.sampled_users), ("without an online row", f.without_row), ("age p50 (h)", _num(f.age_hours_p50)),
        ("age p95 (h)", _num(f.age_hours_p95)), ("age max (h)", _num(f.age_hours_max))]
        + ([("error", f.error)] if f.error else [])) + "</table>"


def _quality_tables(q: ModelQuality) -> str:
    online = _table(["day", "version", "impressions", "clicks", "CTR"],
                    [[v.day, v.model_version, v.impressions, v.clicks, f"{v.ctr:.4f}"] for v in q.online])
    offline = _table(["version", "kind", "created", *OFFLINE_METRICS],
                     [[v.version + (" *" if v.production else ""), v.kind, v.created_at,
                       *(_num(v.metrics.get(m)) for m in OFFLINE_METRICS)] for v in q.offline])
    return (f"<h2>Online CTR per model version</h2>{online}"
            f"<h2>Offline metrics per model version (* production)</h2>{offline}")


STYLE = """body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left} .ok{color:green} .bad{color:#b00}
img{max-width:48%;margin:4px}"""


def page(report: MonitoringReport, plots: list[str]) -> str:
    """The report as one HTML page beside its PNGs."""
    status = ("<p class=ok>All thresholds hold.</p>" if report.ok else
              "<ul class=bad>" + "".join(f"<li>{html.escape(b.message)}</li>" for b in report.breaches) + "</ul>")
    images = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in plots)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ShopRec monitoring {report.day}</title><style>{STYLE}</style></head><body>
<h1>ShopRec monitoring: {report.day}</h1>
<p>Served model: {html.escape(str(report.model_version))}; ages measured at {report.now};
reference: the {report.reference_days} days before. Machine-readable: <a href="report.json">report.json</a>.</p>
{status}
<h2>Input drift</h2>{_drift_table(report.drift)}
<h2>Feature freshness</h2>{_freshness_table(report.freshness)}
{_quality_tables(report.quality)}
<h2>Plots</h2>{images}
</body></html>
"""
