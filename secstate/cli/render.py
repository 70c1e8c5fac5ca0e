"""The one way the CLI puts text in front of a person: attacker-controlled text is inert.

Labels, display names, key names, reasons, TOTP labels, resources, user agents and
request ids are written by whoever made a request, and the stored history may hold
anything older code let through. Everything the CLI prints to a terminal (stdout and
stderr: tables, messages, errors, usage errors, progress bars, log lines) goes through
``inert()``, and the consoles below never interpret Rich markup, emoji codes or
highlighting in data. CSV cells get the same treatment plus a spreadsheet formula guard
(``csv_cell``); JSON is written ASCII-only by its writers (``json.dumps``'s default).

``inert(text)`` shows every character a terminal or a reader could act on as a visible
escape, so the same text always looks the same and can never move the cursor, change
colours, set a window title, open a hyperlink, ring the bell, reorder a line (bidi
controls) or start a new line:

* C0 controls (NUL, BEL, TAB, LF, CR, ESC, ...), DEL and C1 (U+0080-U+009F, U+009B CSI)
* format characters (category Cf: bidi embeddings, overrides and isolates, zero-width
  spaces and joiners, U+FEFF, soft hyphen, tag characters, ...)
* line and paragraph separators (U+2028, U+2029), other separators than the space
  (U+00A0, U+3000, ...), lone surrogates (undecodable argv bytes), private-use and
  unassigned code points: whatever ``str.isprintable()`` refuses
* a few letters and marks that render as nothing (Hangul fillers, the combining
  grapheme joiner, Mongolian variation selectors, Khmer inherent vowels)

Escapes are ``\\xNN`` below U+0100, ``\\uNNNN`` in the BMP and ``\\UNNNNNNNN`` beyond.
A backslash is printed as it is: the table and message forms are for reading, and
``--json`` gives the exact value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:  # imported where used: a command that prints no table loads neither
    from rich.progress import TextColumn
    from rich.table import Table

# Printable by str.isprintable() but invisible: fillers and marks used to forge names.
_INVISIBLE = frozenset(
    (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x3164, 0xFFA0)
)
_HAS_INVISIBLE = re.compile("[" + "".join(map(chr, sorted(_INVISIBLE))) + "]").search


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(value: object) -> str:
    """``value`` as text in which nothing can act on a terminal or a reader; see above."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and (text.isascii() or not _HAS_INVISIBLE(text)):  # at C speed
        return text
    return "".join(
        char if char.isprintable() and ord(char) not in _INVISIBLE else _escape(char)
        for char in text
    )


def inert_lines(text: str) -> str:
    """Text made of lines we composed: each line made inert, our line breaks kept."""
    return "\n".join(inert(line) for line in text.split("\n"))


def is_inert(text: str) -> bool:
    """Whether ``inert`` would leave ``text`` as it is."""
    return inert(text) == text


def cell(value: Any, *, empty: str = "-") -> Text:
    """A table cell: ``empty`` for None, yes/no for booleans, lists joined with commas."""
    if value is None:
        return Text(empty)
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, (list, tuple)):
        return Text(", ".join(inert(v) for v in value) or empty)
    return Text(inert(value))


def lines_cell(lines: Iterable[str]) -> Text:
    """A cell of several lines (ours), each line's content made inert."""
    return Text("\n".join(inert(line) for line in lines))


def make_console(
    *,
    file: IO[str] | None = None,
    stderr: bool = False,
    width: int | None = None,
    soft_wrap: bool = False,
) -> Console:
    """A console that never reads markup, emoji codes or highlighting into what it prints."""
    return Console(
        file=file,
        stderr=stderr,
        width=width,
        soft_wrap=soft_wrap,
        markup=False,
        emoji=False,
        highlight=False,
    )


console = make_console()
err_console = make_console(stderr=True, soft_wrap=True)


def make_table(
    title: str | None, columns: Sequence[str], *, show_lines: bool = False, **options: Any
) -> Table:
    """A table whose title and headers are inert text (every column folds long values)."""
    from rich.table import Table

    table = Table(
        title=None if title is None else Text(inert(title)), show_lines=show_lines, **options
    )
    for column in columns:
        table.add_column(Text(inert(column)), overflow="fold")
    return table


def text_column(text_format: str = "{task.description}") -> TextColumn:
    """A progress-bar text column that shows its description as text, never as markup."""
    from rich.progress import TextColumn

    return TextColumn(text_format, markup=False)


def say(text: str, *, err: bool = False) -> None:
    """One message line (or several we composed) on stdout, or stderr; long values stay
    on one line so they can be copied (tokens, URIs, DNS records)."""
    (err_console if err else console).print(Text(inert_lines(text)), soft_wrap=True)


def error(text: str) -> None:
    """The one line on stderr that says why a command failed: a newline in the data
    cannot make it two."""
    err_console.print(Text(inert(text)), soft_wrap=True)


# --- CSV ------------------------------------------------------------------------------------

# A spreadsheet evaluates a cell starting with one of these as a formula (OWASP's list).
_FORMULA_STARTS = ("=", "+", "-", "@")


def guard_formula(value: str) -> str:
    """``value`` with a ``'`` in front if a spreadsheet could run it as a formula: it starts
    with TAB or CR, or with ``= + - @`` once leading blanks and invisible characters are
    skipped (spreadsheets skip some of them, and the rest are never shown)."""
    if not value or (value[0].isalnum() and ord(value[0]) not in _INVISIBLE):
        return value  # the common case: nothing to skip, nothing a spreadsheet runs
    if value.startswith(("\t", "\r")):
        return "'" + value
    start = 0
    while start < len(value) and (value[start].isspace() or not is_inert(value[start])):
        start += 1
    return "'" + value if value.startswith(_FORMULA_STARTS, start) else value


def csv_cell(value: object) -> object:
    """A cell of a default (not ``--raw-csv``) export: formula-guarded, then inert, so a
    spreadsheet runs nothing and ``cat`` of the file is as safe as a table."""
    if not isinstance(value, str):
        return value
    if value.isascii() and value.isprintable() and value[:1].isalnum():
        return value  # the common case, at C speed (a million-event export has millions)
    return inert(guard_formula(value))
