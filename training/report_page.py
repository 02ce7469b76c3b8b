"""The recalibration report as an HTML page (light: a run's first record is written before the
training code is imported)."""

from __future__ import annotations


def report_page(markdown: str, extra_html: str = "") -> str:
    """The markdown report rendered as a page a manager can read: tables as tables, not pipes.
    Raw HTML in the text (a feature or model name) is shown as text, never run."""
    from markdown_it import MarkdownIt  # rich's own markdown parser: no dependency of our own

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
        "content='width=device-width, initial-scale=1'><title>Recalibration</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:960px;margin:1rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .5rem;"
        "text-align:left}</style></head><body>" + body + extra_html + "</body></html>"
    )
