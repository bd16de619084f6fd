"""Sphinx HTML page -> plain text, with the standard library's html.parser only.

Only the page's main content (``<div class="body" role="main">``) is kept; navigation,
sidebars, search boxes, footers, scripts and styles lie outside it and are dropped.
Inside it, block elements become paragraphs separated by a blank line, ``<pre>`` code
keeps its line breaks, and the "¶" permalink anchors and table-of-contents link lists
are removed because they are link furniture, not prose.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Elements that start and end a paragraph of their own.
_BLOCKS = {"p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd",
           "pre", "blockquote", "table", "tr", "ul", "ol", "dl", "figure", "figcaption", "caption",
           "hr", "br"}
# Elements whose whole subtree is dropped wherever they appear.
_SKIP_TAGS = {"script", "style", "nav", "footer", "header", "form", "button", "noscript", "svg"}
# Classes whose whole subtree is dropped: permalink "¶" anchors, tables of contents
# (pure link lists), Sphinx sidebars and navigation bars.
_SKIP_CLASSES = {"headerlink", "toctree-wrapper", "sphinxsidebar", "related", "footer",
                 "mobile-nav", "menu-wrapper", "inline-search", "copybutton"}
# HTML elements that never have an end tag (they must not be pushed on the open-tag stack).
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


class _MainText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, opens main content, skipped subtree)
        self.in_main = 0      # depth of main-content containers we are inside
        self.skipping = 0     # depth of dropped subtrees we are inside
        self.in_pre = 0
        self.in_table = 0
        self.paragraphs: list[str] = []
        self.buffer: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if tag in _VOID:
            if tag in ("br", "hr") and self.in_main and not self.skipping:
                self._flush()
            return
        opens_main = tag == "div" and attrs.get("role") == "main"
        skip = tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
        self.stack.append((tag, opens_main, skip))
        self.in_main += opens_main
        self.skipping += skip
        if self._active():
            self._open_block(tag)
        self.in_pre += tag == "pre"
        self.in_table += tag == "table"

    def handle_endtag(self, tag):
        # Tolerate stray end tags: pop up to the matching open tag, if there is one.
        if not any(t == tag for t, _, _ in self.stack):
            return
        while self.stack:
            open_tag, opens_main, skip = self.stack.pop()
            if self._breaks_paragraph(open_tag) and self._active():
                self._flush()
            self.in_pre -= open_tag == "pre"
            self.in_table -= open_tag == "table"
            self.in_main -= opens_main
            self.skipping -= skip
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self._active():
            self.buffer.append(data)

    def _open_block(self, tag):
        if self._breaks_paragraph(tag):
            self._flush()
        elif tag in ("td", "th") and "".join(self.buffer).strip():
            self.buffer.append(" | ")  # a table row reads as one line: "cell | cell | cell"
        elif tag in _BLOCKS:
            self.buffer.append(" ")

    def _breaks_paragraph(self, tag) -> bool:
        # Inside a table only rows (and code) break paragraphs; a cell's <p> stays on its row.
        return tag in _BLOCKS and (not self.in_table or tag in ("tr", "table", "pre"))

    def _active(self) -> bool:
        return self.in_main > 0 and self.skipping == 0

    def _flush(self):
        text = "".join(self.buffer)
        self.buffer = []
        if self.in_pre:
            text = text.strip("\n").rstrip()  # code: keep indentation and line breaks
        else:
            text = re.sub(r"\s+", " ", text).strip()
        if text:
            self.paragraphs.append(text)


def html_to_text(html: str) -> str:
    """The main content of a Sphinx page as paragraphs separated by blank lines."""
    parser = _MainText()
    parser.feed(html)
    parser.close()
    parser._flush()
    return "\n\n".join(parser.paragraphs)
