"""The report as one HTML file with its figures inside: MLflow's artifact view renders an HTML
file, while its Markdown preview shows neither relative images nor wide tables well."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from markdown_it import MarkdownIt

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 1.5rem auto;
       padding: 0 1rem; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
td, th, code { white-space: nowrap; }
img { max-width: 100%; }
"""


def inline_images(html: str, folder: Path) -> str:
    """Each `<img src="name.png">` of a figure in `folder` as a data URI."""
    def embedded(match: re.Match) -> str:
        path = folder / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^":/]+\.png)"', embedded, html)


def write_html(markdown_path: Path) -> Path:
    """`report.html` beside `report.md`, self-contained."""
    body = MarkdownIt("commonmark").enable("table").render(markdown_path.read_text())
    title = markdown_path.read_text().splitlines()[0].lstrip("# ").replace("`", "")
    html = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n"
            f"{inline_images(body, markdown_path.parent)}</body></html>\n")
    path = markdown_path.with_suffix(".html")
    path.write_text(html)
    return path
