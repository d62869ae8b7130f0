"""Text that came from a file (labels, file names, spec fields, tool versions, error text),
made safe for where it is shown: HTML, Markdown, the terminal (rich), plot labels.

Every renderer shows untrusted text through these functions and nothing else, so the rules
live in one place. They all start from `visible`: control characters (ESC, the other C0 and
C1 codes, DEL, newlines) and the invisible bidirectional overrides become visible escapes
(``\\x1b``, ``\\n``, ``\\u202e``), so no field can move the cursor, recolour the terminal,
split a table row or reorder what the reader sees.
"""
from __future__ import annotations

import contextlib
import html as _html
import logging
import re
from typing import Any, Iterator

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: C0, DEL, C1; the bidi marks, embeddings, overrides and isolates that reorder what is
#: shown ("Trojan Source"); the Unicode line and paragraph separators
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\u2028\u2029]")


def _code(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def visible(value: Any) -> str:
    """str(value) on one line, with every control character shown as an escape."""
    return _UNSAFE.sub(lambda m: _code(m.group(0)), str(value))


def visible_log_record(record: logging.LogRecord) -> bool:
    """A logging filter (handler.addFilter) that shows a record's message through `visible`,
    newlines kept: log lines name files, and a file name's ESC must not reach the terminal."""
    try:
        message = record.getMessage()
    except Exception:       # a bad format string: logging reports it when it formats
        return True
    record.msg = "\n".join(visible(line) for line in message.split("\n"))
    record.args = None
    return True


# -- HTML ------------------------------------------------------------------------------------
def html_text(value: Any) -> str:
    """For HTML text and quoted attribute values."""
    return _html.escape(visible(value), quote=True)


# -- Markdown --------------------------------------------------------------------------------
#: what Markdown would act on: raw HTML (<), links and images ([ ]), code (`), emphasis
#: (* ~), table cells (|), entities (&) and the escape itself (\); "_" only emphasises at
#: word boundaries and is left alone, so names like mobilenet_v3 stay readable
_MD_ACTIVE = re.compile(r"([\\`*\[\]<>|~&])")


def md_text(value: Any) -> str:
    """For Markdown prose and table cells: shown as the same text, never as markup."""
    return _MD_ACTIVE.sub(r"\\\1", visible(value))


def md_code(value: Any, in_table: bool = False) -> str:
    """A Markdown code span holding `value` literally (its fence longer than any run of
    backticks in it). Inside a table a "|" would still end the cell (GFM), so it is
    escaped there; GFM removes that backslash again."""
    text = visible(value)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`"):
        text = f" {text} "
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


# -- the terminal (rich) ---------------------------------------------------------------------
def term_markup(value: Any) -> str:
    """For a rich markup string: the value's own brackets shown, not obeyed."""
    from rich.markup import escape
    return escape(visible(value))


def term_text(value: Any, style: str = "") -> Any:
    """A rich Text (never parsed as markup) of the value: for table cells and titles."""
    from rich.text import Text
    return Text(visible(value), style=style)


# -- plots (matplotlib) ----------------------------------------------------------------------
def plot_text(value: Any) -> str:
    """For a matplotlib label, inside `plain_text_plots()` (which turns mathtext off): a
    leading "_" would hide the label from a legend."""
    text = visible(value)
    return "\u200b" + text if text.startswith("_") else text


@contextlib.contextmanager
def plain_text_plots() -> Iterator[None]:
    """Matplotlib settings under which every label is plain text: no mathtext (`$x^$` in a
    file name is a parse error at savefig, after the whole run) and no LaTeX (a user's
    matplotlibrc may turn usetex on). Text objects read text.parse_math when made, tick
    labels when drawn: keep figures and their savefig inside."""
    import matplotlib
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield


__all__ = ["visible", "visible_log_record", "html_text", "md_text", "md_code", "term_markup", "term_text",
           "plot_text", "plain_text_plots"]
