"""Text a report shows: control characters made visible, long labels cut. Every user string is
also passed through ``html.escape`` where it is written into the page."""

from __future__ import annotations

MAX_CHARS = 36
"""Longer labels in the pictures are cut with an ellipsis (the full text is in their ``<title>``)."""


def clean(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with control characters shown as escapes (they break XML and confuse readers);
    with ``keep_lines``, newlines and tabs stay (tracebacks, previews)."""
    kept = "\n\t" if keep_lines else ""
    return "".join(
        c if c.isprintable() or c in kept else c.encode("unicode_escape").decode() for c in text
    )


def fit(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cleaned and cut to ``limit`` characters."""
    text = clean(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
