"""The page's own files: no HTML sinks for data, no inline code, nothing loaded from elsewhere."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[3] / "plugins" / "selfheal" / "web" / "static"


def test_script_never_uses_an_html_or_code_sink() -> None:
    js = (STATIC / "app.js").read_text()
    code = re.sub(r"//[^\n]*", "", js)  # the header comment names the sinks it avoids
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setTimeout("',
        "srcdoc",
        "javascript:",
        "DOMParser",
        "createContextualFragment",
    ):
        assert sink not in code, sink
    # every link the script makes is a fixed relative one, never built from data
    assert re.findall(r'h\("a", \{ href: ([^,]+),', code) == ['"./"']


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] == "script" and data.strip():
            self.inline_script = True


def test_page_has_no_inline_code_or_styles_and_only_local_assets() -> None:
    p = _Tags()
    p.feed((STATIC / "index.html").read_text())
    assert not p.inline_script
    for tag, attrs in p.tags:
        assert tag != "style"
        assert not any(a.startswith("on") for a in attrs), (tag, attrs)
        assert "style" not in attrs, (tag, attrs)
        for a in ("src", "href"):
            v = attrs.get(a)
            if v:
                assert not re.match(r"^(https?:)?//", v), f"{tag} loads {v} from elsewhere"
                assert (STATIC / v.removeprefix("static/").split("?")[0]).is_file(), v
    assert [t for t, _ in p.tags].count("script") == 1


@pytest.mark.parametrize("name", ["app.css", "app.js"])
def test_assets_do_not_reach_outside(name: str) -> None:
    text = (STATIC / name).read_text()
    assert "@import" not in text and "url(http" not in text and 'fetch("http' not in text
