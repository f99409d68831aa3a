"""What the HTML pages of ``report`` and ``compare`` share: the escaping of every value shown,
the cleaning of text a server or an input file sent, and the base stylesheet.

Model names, error messages, group values and paths come from servers and input files:
they are untrusted. Each is escaped, and stripped of the characters that could disguise it
or rewrite a terminal (C0/C1 controls, DEL, bidirectional overrides), before it is shown.
"""

from __future__ import annotations

import html
import re

#: Shown in place of a stripped character, so a reader sees that something was there.
REPLACEMENT = "\ufffd"
# C0 (but tab, newline, carriage return), DEL and C1; then the bidirectional marks and
# overrides and the Unicode line separators, which reorder or split what a reader sees.
_CONTROLS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
_LINE_BREAKS = re.compile("[\t\n\r]")
_CARRIAGE_RETURN = re.compile("\r\n?")


def clean(value: object, *, limit: int | None = None, one_line: bool = True) -> str:
    """``value`` as text safe to show: control and bidi characters replaced, tabs and line
    breaks too when ``one_line``, cut to ``limit`` characters with an ellipsis."""
    text = _CONTROLS.sub(REPLACEMENT, str(value))
    # A carriage return alone would let a terminal overwrite the line it ends.
    text = _LINE_BREAKS.sub(" ", text) if one_line else _CARRIAGE_RETURN.sub("\n", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def esc(value: object, *, limit: int | None = None, one_line: bool = False) -> str:
    """``value`` cleaned (see :func:`clean`) and escaped for HTML text or a quoted attribute.

    A URL in the data (a model name, a group value) stays inert text: the page holds no
    "://" at all, so nothing in it can be mistaken for a fetch.
    """
    text = clean(value, limit=limit, one_line=one_line)
    return html.escape(text).replace("://", "&#58;//")


#: Typography, tables and notes; each page adds its own layout.
BASE_CSS = (
    ":root{--ink:#1f2328;--muted:#59636e;--line:#d8dee4;--soft:#f6f8fa;--accent:#3b6fc4;"
    "--bad:#b3261e;--good:#1b7f3b;--warn:#8a5a00}"
    "*{box-sizing:border-box}"
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--ink);"
    "margin:0;padding:1.5rem clamp(.75rem,3vw,2.5rem)}"
    "h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:0 0 .6rem}"
    "table{border-collapse:collapse;margin:.25rem 0 .75rem}"
    "th,td{padding:.2rem .7rem;border-bottom:1px solid var(--line)}"
    "th{text-align:left;font-weight:normal}thead th{font-weight:600;color:var(--muted)}"
    "td{text-align:right;font-variant-numeric:tabular-nums}"
    ".note{color:var(--warn)}.muted{color:var(--muted)}.bad{color:var(--bad)}"
    ".good{color:var(--good)}"
)
