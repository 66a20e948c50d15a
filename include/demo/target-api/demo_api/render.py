"""HTML rendering with Jinja2 (the index page and the embeddable item card)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)


def render_index(categories: list[dict[str, Any]], items: list[dict[str, Any]]) -> str:
    return _env.get_template("index.html").render(categories=categories, items=items)


def card_attributes(item_id: int, options: Mapping[str, str]) -> dict[str, str]:
    """data-* attributes for the card: the embedding page passes its options as query parameters.

    VULNERABLE in combination with Jinja2 < 3.1.3 (CVE-2024-22195): the option
    NAMES come from the client and become attribute keys in `xmlattr`, which
    older Jinja2 does not validate, so a name containing spaces injects new
    attributes (e.g. an event handler). Values are always escaped.
    """
    attrs = {"data-item-id": str(item_id)}
    attrs.update({f"data-{name}": value for name, value in options.items()})
    return attrs


def render_item_card(item: dict[str, Any], attrs: dict[str, str]) -> str:
    """Render the card; fixed Jinja2 versions raise ValueError for invalid attribute keys."""
    return _env.get_template("item_card.html").render(item=item, attrs=attrs)
