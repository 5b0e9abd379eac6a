"""The guides of ``docs/`` (shifter's, operator's, analyst's, the data format …) rendered for ``/docs``.

Markdown (CommonMark + tables, by markdown-it-py) becomes one HTML page per
file; every heading gets an ``id`` (:func:`slug` of its text), so a runbook
link ``/docs/shifter-guide#no_data`` lands on the alarm's entry; links to
``other.md`` become ``/docs/other``. The files are read from ``docs/`` of a
source checkout or the copy a wheel carries (``na64_online/docs``, put there
by setup.py), and rendered once per file version (cached by modification time).
"""

from __future__ import annotations

import html
import re
import threading
from pathlib import Path

from markdown_it import MarkdownIt

#: where the guides are: docs/ beside the layers in a checkout, na64_online/docs in an installed wheel
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SLUG_DROP = re.compile(r"[^a-z0-9_-]+")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — na64-online</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem; line-height: 1.45; }}
code, pre {{ background: #f3f3f3; font-size: 0.92em; }} pre {{ padding: 0.6rem; overflow-x: auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem; vertical-align: top; }}
nav {{ border-bottom: 1px solid #ccc; padding-bottom: 0.4rem; margin-bottom: 1rem; }}
img {{ max-width: 100%; border: 1px solid #ccc; }} h2, h3 {{ scroll-margin-top: 1rem; }}
</style></head>
<body><nav><a href="/">dashboard</a> · <a href="/docs">guides</a> · <a href="/api/docs">API</a></nav>
{body}
</body></html>
"""


def slug(text: str) -> str:
    """Anchor of a heading: lower case, runs of anything but letters, digits, '_' and '-' become '-'."""
    return _SLUG_DROP.sub("-", text.strip().lower()).strip("-")


def _heading_ids(state) -> None:
    tokens = state.tokens
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and i + 1 < len(tokens) and not token.attrGet("id"):
            token.attrSet("id", slug(tokens[i + 1].content.replace("`", "")))


def _local_links(state) -> None:
    for block in state.tokens:
        for token in block.children or ():
            if token.type == "link_open":
                href = token.attrGet("href") or ""
                if "://" not in href and re.match(r"^[\w.-]+\.md(#.*)?$", href):
                    page, _, anchor = href.partition("#")
                    token.attrSet("href", page[:-3] + (f"#{anchor}" if anchor else ""))


def markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.core.ruler.push("heading_ids", _heading_ids)
    md.core.ruler.push("local_links", _local_links)
    return md


class Guides:
    """The markdown files of one directory, rendered on demand and cached while unchanged."""

    def __init__(self, directory: Path = DOCS_DIR) -> None:
        self.directory = directory
        self._md = markdown()
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, str]] = {}

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.md") if NAME_RE.match(p.stem))

    def title(self, name: str) -> str:
        path = self.directory / f"{name}.md"
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
        return name

    def page(self, name: str) -> str | None:
        """The HTML page of ``name`` (``shifter-guide`` for docs/shifter-guide.md); None if there is none."""
        if not NAME_RE.match(name):
            return None
        path = self.directory / f"{name}.md"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        text = path.read_text(encoding="utf-8")
        rendered = PAGE.format(title=html.escape(self.title(name)), body=self._md.render(text))
        with self._lock:
            self._cache[name] = (stamp, rendered)
        return rendered

    def index(self) -> str:
        items = "\n".join(f'<li><a href="/docs/{n}">{html.escape(self.title(n))}</a> ({n}.md)</li>'
                          for n in self.names())
        return PAGE.format(title="Guides", body=f"<h1>na64-online guides</h1>\n<ul>\n{items}\n</ul>")
