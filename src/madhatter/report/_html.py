"""The report page: one HTML file, complete in itself.

Inline CSS, inline SVG, no script, no font, no image, no URL: it opens the same from a mail
attachment, offline, years later. A Content-Security-Policy forbids loading anything, so even a
mistake here could not make it reach out. Every text that came from the user (step names, errors,
parameters, items) is escaped with ``html.escape`` and has its control characters made visible.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Mapping

from .._version import __version__
from ._dag import dag_svg, ordered
from ._summary import TIMELINE_LIMIT, Summary
from ._text import clean
from ._timeline import colours, timeline_svg

SKIPPED_SHOWN = 500
"""Skipped items listed per step (the rest are counted)."""
INCIDENTS_SHOWN = 500
"""Retries, splits and concurrency cuts listed (the rest are counted)."""

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0 auto;
  padding: 1.2rem 1.5rem 3rem;
  max-width: 1200px;
  color: #1a1a1a;
  background: #fff;
  }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
h2 {
  font-size: 1.1rem;
  margin: 1.8rem 0 .5rem;
  border-bottom: 1px solid #ddd;
  padding-bottom: .2rem;
  }
code, pre, .mono {
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  font-size: 12.5px;
  }
pre {
  background: #f6f6f6;
  padding: .6rem .8rem;
  overflow-x: auto;
  white-space: pre-wrap;
  word-break: break-word;
  }
.muted { color: #666; }
.status {
  display: inline-block;
  padding: .05rem .55rem;
  border-radius: 1rem;
  font-weight: 600;
  color: #fff;
  background: #777;
  }
.status-succeeded { background: #2e7d32; } .status-failed { background: #c62828; }
.status-cancelled { background: #8d6e00; } .status-running, .status-queued { background: #1565c0; }
dl.facts {
  display: grid;
  grid-template-columns: max-content 1fr;
  gap: .15rem 1rem;
  margin: .8rem 0;
  }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; }
.error {
  border-left: 4px solid #c62828;
  background: #fdecea;
  padding: .5rem .9rem;
  margin: .8rem 0;
  }
.note { border-left: 4px solid #c2841a; background: #fdf5e6; padding: .4rem .9rem; }
.picture {
  overflow-x: auto;
  border: 1px solid #e4e4e4;
  border-radius: 6px;
  padding: .4rem;
  background: #fff;
  }
table { border-collapse: collapse; width: 100%; }
th, td {
  text-align: left;
  padding: .3rem .6rem;
  border-bottom: 1px solid #e8e8e8;
  vertical-align: top;
  }
th { background: #fafafa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.legend { display: flex; flex-wrap: wrap; gap: .3rem 1rem; margin: .4rem 0; }
.swatch {
  display: inline-block;
  width: .9rem;
  height: .9rem;
  border-radius: 2px;
  vertical-align: -2px;
  margin-right: .3rem;
  }
footer { margin-top: 2.5rem; color: #777; font-size: 12px; }
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def e(text: object, *, keep_lines: bool = False) -> str:
    """``text`` as safe HTML: control characters made visible, markup characters escaped."""
    return html.escape(clean(str(text), keep_lines=keep_lines))


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(int(seconds), 60)
    return (
        f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m{rest:02d}s"
    )


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already."""
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in pairs if v) + "</dl>"


def _table(mapping: Mapping[str, str], key: str, value: str, empty: str) -> str:
    if not mapping:
        return f'<p class="muted">{empty}</p>'
    rows = "".join(
        f"<tr><td><code>{e(k)}</code></td><td><code>{e(v, keep_lines=True)}</code></td></tr>"
        for k, v in mapping.items()
    )
    return f"<table><thead><tr><th>{key}</th><th>{value}</th></tr></thead><tbody>{rows}</tbody></table>"


def page(
    summary: Summary,
    *,
    result_preview: str | None = None,
    traceback: str | None = None,
    title: str | None = None,
) -> str:
    """The whole HTML document of ``summary``."""
    s = summary
    name = s.pipeline or "a pipeline"
    heading = title or (f"Run {s.run_id} of {name}" if s.run_id else f"Run of {name}")
    steps = ordered(list(s.steps), s.edges)
    colour = colours(steps)
    rows = s.steps
    body: list[str] = [
        f"<header><h1>{e(heading)}</h1>",
        f'<p><span class="status status-{e(s.status)}" id="status">{e(s.status)}</span> '
        + (f"after {_duration(s.seconds)}" if s.seconds is not None else "")
        + "</p></header>",
    ]
    if s.error or traceback:
        body.append('<section class="error" id="error" role="alert"><h2>Error</h2>')
        if s.error:
            body.append(f"<p><strong>{e(s.error, keep_lines=True)}</strong></p>")
        if traceback:
            body.append(f"<pre>{e(traceback, keep_lines=True)}</pre>")
        body.append("</section>")
    engine = e(s.engine) + (f" with {s.workers} workers" if s.workers is not None else "")
    body.append(
        _facts(
            [
                ("Pipeline", f"<code>{e(s.pipeline)}</code>" if s.pipeline else ""),
                ("Run id", f"<code>{e(s.run_id)}</code>" if s.run_id else ""),
                ("Engine", engine if s.engine else ""),
                ("Started", _when(s.started_at)),
                ("Finished", _when(s.finished_at)),
                ("Dashboard", f"<code>{e(s.dashboard)}</code>" if s.dashboard else ""),
                (
                    "Events",
                    f"{s.events:,} recorded" + (f", {s.dropped:,} left out" if s.dropped else ""),
                ),
            ]
        )
    )
    if s.dropped:
        body.append(
            f'<p class="note" id="dropped">This run emitted more chunk events than a report keeps: '
            f"{s.dropped:,} were left out, so the timeline is not complete; the table's numbers "
            "are the run's own where the report had them.</p>"
        )
    if not s.started:
        body.append(
            '<p class="note">No <code>RunStarted</code> event: the run ended before it started '
            "(or its first events were lost), so there is no graph, engine or parameters.</p>"
        )

    body.append('<section id="dag"><h2>Graph</h2>')
    svg = dag_svg(steps, s.edges, rows)
    body.append(f'<div class="picture">{svg}</div>' if svg else '<p class="muted">No steps.</p>')
    body.append("</section>")

    body.append('<section id="timeline"><h2>Timeline</h2>')
    chart = timeline_svg(s.bars, colour)
    if chart:
        body.append(
            '<p class="muted">Chunks per worker over time; hover a bar for its step, chunk, items '
            "and seconds. Steps run on the driver are on the lane <code>driver</code>, chunks "
            "found whole in the chunk cache on the lane <code>cache</code>.</p>"
        )
        legend = "".join(
            f'<span><span class="swatch" style="background:{colour[step]}"></span>{e(step)}</span>'
            for step in steps
            if any(bar.step == step for bar in s.bars)
        )
        body.append(f'<div class="legend">{legend}</div><div class="picture">{chart}</div>')
        if s.bars_left_out:
            body.append(
                f'<p class="note">{s.bars_left_out:,} more chunks are not drawn (a timeline '
                f"keeps the first {TIMELINE_LIMIT:,}).</p>"
            )
    else:
        body.append('<p class="muted">No chunk finished.</p>')
    body.append("</section>")

    body.append('<section id="steps"><h2>Steps</h2>')
    body.append(_steps_table(s, steps))
    body.append("</section>")

    skipped = [(step, item) for step in steps for item in rows[step].skipped]
    if skipped:
        body.append(f'<section id="skipped"><h2>Skipped items ({len(skipped):,})</h2>')
        body.append(
            "<table><thead><tr><th>Step</th><th class='num'>Chunk</th><th>Item</th><th>Error</th>"
            "</tr></thead><tbody>"
        )
        for step in steps:
            items = rows[step].skipped
            for item in items[:SKIPPED_SHOWN]:
                body.append(
                    f"<tr><td>{e(step)}</td><td class='num'>{item.chunk}</td>"
                    f"<td><code>{e(item.item)}</code></td>"
                    f"<td><code>{e(item.error, keep_lines=True)}</code></td></tr>"
                )
            if len(items) > SKIPPED_SHOWN:
                more = len(items) - SKIPPED_SHOWN
                body.append(
                    f"<tr><td>{e(step)}</td>"
                    f"<td colspan='3' class='muted'>... and {more:,} more</td></tr>"
                )
        body.append("</tbody></table></section>")

    if s.incidents:
        body.append(f'<section id="incidents"><h2>Retries and splits ({len(s.incidents):,})</h2><pre>')
        start = s.started_at or s.incidents[0][0]
        for at, text in s.incidents[:INCIDENTS_SHOWN]:
            body.append(f"+{at - start:8.3f}s  {e(text)}\n")
        if len(s.incidents) > INCIDENTS_SHOWN:
            body.append(f"... and {len(s.incidents) - INCIDENTS_SHOWN:,} more\n")
        body.append("</pre></section>")

    body.append('<section id="params"><h2>Parameters</h2>')
    body.append(_table(s.params, "Name", "Value", "No run parameters were given."))
    body.append("</section>")

    body.append('<section id="environment"><h2>Environment</h2>')
    versions = dict(s.versions)
    if versions.get("madhatter") != __version__:
        versions["madhatter (of this report)"] = __version__
    body.append(_table(versions, "What", "Version", ""))
    body.append("</section>")

    if result_preview is not None:
        body.append('<section id="result"><h2>Result</h2>')
        body.append(f"<pre>{e(result_preview, keep_lines=True)}</pre></section>")

    made = datetime.datetime.now(datetime.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    body.append(f"<footer>Made by madhatter {e(__version__)} on {made}.</footer>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(heading)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _steps_table(s: Summary, steps: list[str]) -> str:
    if not steps:
        return '<p class="muted">No steps.</p>'
    head = (
        "<thead><tr><th>Step</th><th class='num'>Items in</th><th class='num'>Items out</th>"
        "<th class='num'>From cache</th><th class='num'>Chunks</th><th class='num'>Work time</th>"
        "<th class='num'>Wall time</th><th class='num'>Throughput</th><th class='num'>Retries</th>"
        "<th class='num'>Skipped</th><th>State</th></tr></thead>"
    )
    lines = []
    for name in steps:
        row = s.steps[name]
        state = "finished" if row.finished else "started, not finished" if row.started else "not run"
        rate = f"{row.throughput:,.1f} items/s" if row.throughput is not None else ""
        skipped = f"<a href='#skipped'>{len(row.skipped):,}</a>" if row.skipped else "0"
        split = f" ({row.splits} split)" if row.splits else ""
        lines.append(
            f"<tr><td><code>{e(name)}</code></td><td class='num'>{row.items_in:,}</td>"
            f"<td class='num'>{row.items_out:,}</td><td class='num'>{row.cached:,}</td>"
            f"<td class='num'>{row.chunks:,}</td><td class='num'>{_duration(row.work_seconds)}</td>"
            f"<td class='num'>{_duration(row.wall_seconds)}</td><td class='num'>{rate}</td>"
            f"<td class='num'>{row.retries:,}{split}</td><td class='num'>{skipped}</td>"
            f"<td>{state}</td></tr>"
        )
    return f"<table>{head}<tbody>{''.join(lines)}</tbody></table>"
