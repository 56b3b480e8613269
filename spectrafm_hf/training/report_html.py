"""``report.html``: the report as one self-contained page (figures embedded as base64 PNG, no scripts,
no external files), rendered from the same blocks as ``report.md`` (:func:`.report.report_blocks`);
and :func:`check_html_report`, which verifies that a page parses and every image decodes.
"""

from __future__ import annotations

import base64
import html
import io
import re
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Mapping, Sequence

from .report import Bullets, Figure, Heading, Paragraph, Table, report_blocks, write_text_atomic

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 0; background: #fafafa; line-height: 1.45; }
main { max-width: 1500px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.7em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
th { background: #f0f3f7; white-space: normal; min-width: 4em; vertical-align: bottom; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-top: .4em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
strong.negative { color: #a11; }
"""

#: Plain-text label names typeset in HTML (display names of data/labels.py → HTML).
TYPESET = {"Teff": "T<sub>eff</sub>", "T_eff": "T<sub>eff</sub>", "log g": "log&nbsp;<i>g</i>"}


#: Bold text starting with one of these is a negative result or a missed target: drawn in red.
NEGATIVE_WORDS = ("Negative", "Not met", "below control", "no")


def _strong(match) -> str:
    text = match.group(1)
    negative = any(text == word or text.startswith(word + " ") or text.startswith(word + ":")
                   for word in NEGATIVE_WORDS)
    return f'<strong class="negative">{text}</strong>' if negative else f"<strong>{text}</strong>"


def inline(text: str) -> str:
    """Escape ``text`` and render its inline markup: ``**bold**``, ```code```, T_eff and log g."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", _strong, out)
    for plain, typeset in TYPESET.items():
        out = re.sub(rf"(?<![\w/]){re.escape(plain)}(?![\w/])", typeset, out)
    return out


#: A table cell holding numbers only (e.g. "0.168", "+59", "0.78 → 0.66", "4107–4618"): right-aligned.
NUMERIC_CELL = re.compile(r"^[\s\d.,+\-−–→×%]+$")


def _cell(text: str) -> str:
    numeric = ' class="num"' if NUMERIC_CELL.match(str(text)) else ""
    return f"<td{numeric}>{inline(text)}</td>"


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in table.header)
    rows = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>\n" for row in table.rows)
    return f'<div class="table"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody></table></div>'


def _figure_html(figure: Figure, path: Path) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = inline(figure.caption)
    return (f'<figure id="{figure.key}"><img src="data:image/png;base64,{encoded}" '
            f'alt="{html.escape(figure.caption)}">\n<figcaption>{caption}</figcaption></figure>')


def render_html(blocks: Sequence, figures: Mapping[str, Path | None], title: str = "SpectraFM pipeline report") -> str:
    """One HTML page of ``blocks`` with every figure's PNG embedded (opens offline in any browser)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph) and block.text:
            parts.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            parts.append(_table_html(block))
        elif isinstance(block, Figure):
            parts.append(_figure_html(block, figures[block.key]))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n"
            f"</main>\n</body>\n</html>\n")


def write_html_report(out_dir: Path, metrics: Mapping, figures: Mapping[str, Path | None]) -> Path:
    """Write ``report.html`` (self-contained) beside ``report.md``."""
    page = render_html(report_blocks(metrics, figures), figures)
    return write_text_atomic(Path(out_dir) / "report.html", page)


# ----------------------------------------------------------------------------------------------
# Checking a page
# ----------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"


class _PageParser(HTMLParser):
    """Collects image sources, the title and the nesting of block tags."""

    BLOCK_TAGS = {"html", "head", "body", "main", "table", "thead", "tbody", "tr", "figure", "ul", "div"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.title = ""
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        self._in_title = tag == "title"
        if tag in self.BLOCK_TAGS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        self._in_title = False
        if tag in self.BLOCK_TAGS:
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            else:
                self.stack.pop()

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def decode_png(source: str) -> tuple[int, int]:
    """(width, height) of a ``data:image/png;base64,`` source after decoding it completely.

    Raises:
        ValueError: not a base64 PNG data URI, or the PNG does not decode.
    """
    if not source.startswith(DATA_PNG):
        raise ValueError(f"image source {source[:40]!r}... is not an embedded PNG (data:image/png;base64,)")
    data = base64.b64decode(source[len(DATA_PNG):], validate=True)
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("embedded image does not start with the PNG signature")
    width, height = struct.unpack(">II", data[16:24])
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(data), format="png")  # decodes every chunk: a truncated PNG raises
    if pixels.shape[:2] != (height, width):
        raise ValueError(f"embedded PNG header says {width}×{height}, pixels are {pixels.shape[1]}×{pixels.shape[0]}")
    return width, height


def check_html_report(path: str | Path) -> dict:
    """Parse a report page and decode every image; return ``{"title", "images": [(w, h)], "tags": {...}}``.

    Raises:
        ValueError: unbalanced block tags, no title, or an image that is not a decodable embedded PNG.
    """
    parser = _PageParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    parser.close()
    if parser.errors or parser.stack:
        raise ValueError(f"{path}: unbalanced tags: {(parser.errors or parser.stack)[:3]}")
    if not parser.title.strip():
        raise ValueError(f"{path}: the page has no <title>")
    return {"title": parser.title.strip(), "images": [decode_png(src) for src in parser.images],
            "tags": dict(parser.counts)}
