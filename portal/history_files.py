"""A person's history as files: CSV for spreadsheets and PDF for printing, both in Japanese.

CSV is UTF-8 with a byte-order mark, which is what makes Excel read it as UTF-8 rather than
the legacy Shift_JIS. The PDF embeds (a subset of) a CJK OpenType font found on this machine
(Debian's fonts-noto-cjk), so it shows the same text on a reader without Japanese fonts.
"""
from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterable
from pathlib import Path

from access_history.record import iso_utc
from access_history.service import TimelineEntry
from portal import i18n
from portal.wording import outcome_text

FONT_ENV = "RENKEI_PDF_FONT"
# (path pattern, face index in a collection): the Japanese face of Noto CJK is number 0
FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 0),
    ("/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf", 0),
    ("/usr/share/fonts/**/NotoSansCJK*-Regular.tt[cf]", 0),
    ("/usr/share/fonts/**/NotoSansJP*.[ot]tf", 0),
    ("/usr/share/fonts/**/ipag*.ttf", 0),
    ("/usr/share/fonts/**/ipaexg.ttf", 0),
)

# new columns go at the end: scripts read the older ones by position
COLUMNS = ("日時 (UTC)", "照会者", "提供者", "情報", "事務", "結果", "結果コード", "法令", "職員", "記録番号",
           "照会日時 (UTC)", "提供日時 (UTC)")


class NoFont(RuntimeError):
    """No font with Japanese glyphs is installed: a PDF cannot be made."""


def find_font() -> tuple[Path, int]:
    """The CJK font to embed: RENKEI_PDF_FONT if set, else the first installed candidate."""
    if os.environ.get(FONT_ENV):
        path = Path(os.environ[FONT_ENV])
        if path.is_file():
            return path, 0
        raise NoFont(f"{FONT_ENV} names no file: {path}")
    for pattern, face in FONT_CANDIDATES:
        for match in sorted(glob.glob(pattern, recursive=True)):
            return Path(match), face
    raise NoFont("no Japanese font is installed (Debian: apt-get install fonts-noto-cjk)")


def rows(items: Iterable[TimelineEntry], names: dict[str, str]) -> Iterable[list[str]]:
    """One row per entry in the current language; a sealed entry shows only that it exists."""
    _ = i18n.gettext
    for item in items:
        e = item.entry
        when = _time(e.recorded_at)
        if item.sealed:
            sealed = f"{_('この記録は次の日付まで非開示です:')} {(iso_utc(e.sealed_until) or '')[:10]}"
            yield [when, "", "", "", "", sealed, "", "", "", "", "", ""]
            continue
        yield [when, names.get(e.requester, e.requester), names.get(e.provider, e.provider), e.info_type_code,
               e.task_code, _(outcome_text(e.outcome)), e.outcome, e.legal_basis or "", e.staff or "", e.entry_id,
               _time(e.asked_at), _time(e.provided_at)]


def _time(value) -> str:
    """A stored UTC time as `YYYY-MM-DD HH:MM:SS`; empty where none was recorded."""
    return (iso_utc(value) or "").replace("T", " ")[:19]


def header() -> list[str]:
    return [i18n.gettext(c) for c in COLUMNS]


def to_csv(items: Iterable[TimelineEntry], names: dict[str, str]) -> bytes:
    """UTF-8 with BOM, CRLF line ends, a header row, one row per entry."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header())
    for row in rows(items, names):
        writer.writerow([_spreadsheet_safe(cell) for cell in row])
    return "\ufeff".encode() + out.getvalue().encode("utf-8")


def _spreadsheet_safe(cell: str) -> str:
    # a cell starting with = + - @ would be run as a formula by a spreadsheet (CSV injection)
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def to_pdf(items: Iterable[TimelineEntry], names: dict[str, str], *, title: str, subtitle: str) -> bytes:
    """An A4 landscape table of the entries, with the CJK font embedded as a subset."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    path, face = find_font()
    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_title(title)
    pdf.set_lang(i18n.current())
    pdf.add_font("cjk", fname=str(path), collection_font_number=face)
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font("cjk", size=14)
    pdf.cell(text=title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("cjk", size=7)
    pdf.cell(text=subtitle, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    # recorded, asked, provided, requester, staff, provider, info, task, outcome, law (277 mm across)
    shown = [0, 10, 11, 1, 8, 2, 3, 4, 5, 7]
    with pdf.table(col_widths=(19, 19, 19, 30, 18, 30, 22, 22, 60, 38), headings_style=FontFace(emphasis=None),
                   line_height=4.5, text_align="LEFT") as table:
        heading = header()
        table.row([heading[i] for i in shown])
        for row in rows(items, names):
            table.row([row[i] for i in shown])
    return bytes(pdf.output())
