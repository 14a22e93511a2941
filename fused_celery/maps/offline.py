"""Folium maps that need no network: Leaflet inlined from package data, and a check of the HTML.

folium's ``Map`` (and every ``JSCSSMixin`` element: controls, plugins) lists the JavaScript and
CSS it loads from CDNs as ``(name, url)`` pairs in ``default_js`` / ``default_css``; rendering
adds a ``<script src>`` / ``<link href>`` per pair to the page header under that name.
:func:`inline_assets` adds an inline ``<script>`` / ``<style>`` under the same name instead and
empties those lists on the element, so folium renders the vendored copy and links nothing.

Shipped (``assets/``, see ``assets/README.md``): Leaflet 1.9.4 from the npm registry. folium's
other defaults (jQuery, Bootstrap, Font Awesome, awesome-markers) serve popups and marker icons,
which these maps do not use (they use tooltips and circle markers): :data:`NOT_NEEDED` names
them and they are dropped. An element asking for anything else raises
:class:`OfflineAssetError` instead of loading it from a CDN.

Written by hand because folium has no offline mode (its ``JavascriptLink(download=True)`` fetches
the CDN URL at render time): the name→file table, the swap of ``leaflet.css``'s image URLs for
``data:`` URIs, and :func:`network_urls`, a regex scan of the final HTML for anything a browser
would fetch from the network when the page loads.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterator
from importlib import resources

from branca.element import Element, Figure
from folium.elements import JSCSSMixin

from fused_celery.errors import OfflineAssetError

ASSETS: dict[str, str] = {
    "leaflet": "leaflet/leaflet.js",
    "leaflet_css": "leaflet/leaflet.css",
}
"""folium's resource names → files under ``fused_celery/maps/assets/``."""

NOT_NEEDED: frozenset[str] = frozenset(
    {
        "jquery",
        "bootstrap",
        "awesome_markers",
        "bootstrap_css",
        "glyphicons_css",
        "awesome_markers_font_css",
        "awesome_markers_css",
        "awesome_rotate_css",
    }
)
"""folium ``Map`` defaults left out: used only by popups and awesome-marker icons."""

_SOURCE_MAP = re.compile(r"^\s*/[/*]# sourceMappingURL=.*$", re.MULTILINE)
_CSS_IMAGE = re.compile(r"url\((['\"]?)(images/[A-Za-z0-9_.-]+\.png)\1\)")
_NETWORK = r"""(?:https?:)?//[^"'\s>)]+"""
_FETCHED = [
    re.compile(rf"""<script\b[^>]*\bsrc\s*=\s*["']?({_NETWORK})""", re.IGNORECASE),
    re.compile(rf"""<link\b[^>]*\bhref\s*=\s*["']?({_NETWORK})""", re.IGNORECASE),
    re.compile(rf"""<(?:img|iframe|embed|source)\b[^>]*\bsrc\s*=\s*["']?({_NETWORK})""", re.I),
    re.compile(rf"""url\(\s*["']?({_NETWORK})""", re.IGNORECASE),
    re.compile(rf"""@import\s+["']({_NETWORK})""", re.IGNORECASE),
]


def _asset_path(relpath: str) -> resources.abc.Traversable:
    return resources.files("fused_celery.maps").joinpath("assets", *relpath.split("/"))


@functools.cache
def asset_text(relpath: str) -> str:
    """The content of a vendored file (``relpath`` under ``assets/``), ready to inline:
    source-map comments removed, and for CSS the ``images/*.png`` it uses as ``data:`` URIs."""
    text = _asset_path(relpath).read_text(encoding="utf-8")
    text = _SOURCE_MAP.sub("", text)
    if relpath.endswith(".css"):
        folder = relpath.rsplit("/", 1)[0]

        def data_uri(match: re.Match[str]) -> str:
            image = _asset_path(f"{folder}/{match.group(2)}").read_bytes()
            return f"url(data:image/png;base64,{base64.b64encode(image).decode('ascii')})"

        text = _CSS_IMAGE.sub(data_uri, text)
    return text


def _inline_element(name: str, kind: str, owner: str, url: str) -> Element | None:
    if name in NOT_NEEDED:
        return None
    if name not in ASSETS:
        raise OfflineAssetError(
            f"{owner} needs the {kind} resource {name!r} ({url}), which fused-celery does not "
            "ship for offline maps; vendor it under fused_celery/maps/assets/ and add it to "
            "fused_celery.maps.offline.ASSETS, or leave that element out of the map"
        )
    # Closing tags inside the code would end the element early; the vendored files have none.
    text = asset_text(ASSETS[name]).replace("</script", "<\\/script")
    tag = "script" if kind == "JavaScript" else "style"
    element = Element(f"<{tag} data-fused-celery-asset={name!r}>{{{{ this.code }}}}</{tag}>")
    element.code = text  # rendered through the template's variable: no Jinja parsing of the code
    return element


def _walk(element: Element) -> Iterator[Element]:
    yield element
    for child in list(element._children.values()):
        yield from _walk(child)


def inline_assets(figure: Figure) -> None:
    """Make ``figure`` (a folium map's root, after every layer was added) render its
    JavaScript and CSS inline from package data; raises :class:`OfflineAssetError` for a
    resource that is not shipped. Call it last, just before rendering."""
    for element in _walk(figure):
        if not isinstance(element, JSCSSMixin):
            continue
        owner = type(element).__name__
        for kind, pairs in (("JavaScript", element.default_js), ("CSS", element.default_css)):
            for name, url in pairs:
                inline = _inline_element(name, kind, owner, url)
                if inline is not None:
                    figure.header.add_child(inline, name=name)
        element.default_js = []  # instance attributes: the class lists stay as folium has them
        element.default_css = []


def network_urls(html: str) -> list[str]:
    """The URLs in ``html`` that a browser fetches from the network when the page loads
    (scripts, stylesheets, images, frames, CSS ``url()`` and ``@import``), in order found.
    Links users click (``<a href>``) and tile URLs inside map scripts are not counted."""
    found: list[str] = []
    for pattern in _FETCHED:
        found.extend(m.group(1) for m in pattern.finditer(html))
    return found


def check_offline(html: str) -> None:
    """Raise :class:`OfflineAssetError` when ``html`` loads anything from the network."""
    urls = network_urls(html)
    if urls:
        shown = ", ".join(sorted(set(urls))[:5])
        raise OfflineAssetError(
            f"the map's HTML loads {len(urls)} resource(s) from the network ({shown}); "
            "fused-celery maps must work offline"
        )
