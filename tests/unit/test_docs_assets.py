"""/docs and /redoc work in an air-gapped cluster: their scripts and styles come from the app, not a CDN.

No Ray: the module-level FastAPI app is driven with Starlette's TestClient, at / and mounted under /fused the
way Ray Serve serves an application with `route_prefix="/fused"` (ASGI `root_path` set, full `path` kept).
"""

import re
from html.parser import HTMLParser

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from deployments.ingress import api

ASSET_TYPES = {"script": "javascript", "stylesheet": "text/css"}


class _Assets(HTMLParser):
    """The URLs a page loads: <script src>, <link href> (stylesheets, icons), <redoc spec-url>."""

    def __init__(self):
        super().__init__()
        self.scripts, self.styles, self.other = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            (self.styles if "stylesheet" in attrs.get("rel", "") else self.other).append(attrs["href"])
        elif tag == "redoc" and attrs.get("spec-url"):
            self.other.append(attrs["spec-url"])


@pytest.fixture(scope="module", params=["", "/fused"], ids=["root", "route_prefix"])
def served(request):
    prefix = request.param
    app = Starlette(routes=[Mount(prefix, app=api)]) if prefix else api
    with TestClient(app) as client:
        yield client, prefix


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_app(served, page):
    client, prefix = served
    response = client.get(prefix + page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", response.text), "an asset from another host"
    assert "fonts.googleapis" not in response.text and "cdn.jsdelivr" not in response.text
    assets = _Assets()
    assets.feed(response.text)
    assert assets.scripts, "the page loads no script"
    if page == "/docs":
        assert assets.styles, "Swagger UI loads no stylesheet"
    for kind, urls in (("script", assets.scripts), ("stylesheet", assets.styles)):
        for url in urls:
            assert url.startswith(prefix + "/"), f"{url} is not under the application's route prefix {prefix!r}"
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert ASSET_TYPES[kind] in asset.headers["content-type"], (url, asset.headers["content-type"])
            assert len(asset.content) > 10_000, f"{url} is too small to be the real bundle"
    for url in assets.other:  # the favicon, redoc's spec URL
        assert url.startswith(prefix + "/") and client.get(url).status_code == 200, url


def test_swagger_ui_reads_the_schema_under_the_route_prefix(served):
    client, prefix = served
    page = client.get(prefix + "/docs").text
    (openapi_url,) = re.findall(r"url: '([^']+)'", page)
    assert openapi_url == prefix + "/openapi.json"
    schema = client.get(openapi_url).json()
    assert {"/healthz", "/readyz", "/v1/soundtracks", "/v1/soundtracks:stream"} <= set(schema["paths"])
    assert not any(path.startswith("/docs") or path == "/redoc" for path in schema["paths"])


def test_swagger_ui_is_a_version_that_renders_openapi_3_1(served):
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders from 5.0 on (4.x says 'no valid version field')."""
    client, prefix = served
    assert client.get(prefix + "/openapi.json").json()["openapi"].startswith("3.1")
    bundle = client.get(prefix + "/docs-assets/swagger-ui-bundle.js").text
    assert re.search(r'"5\.\d+\.\d+"', bundle), "swagger-ui-bundle.js is not Swagger UI 5.x"


def test_a_missing_asset_is_a_json_404(served):
    client, prefix = served
    response = client.get(prefix + "/docs-assets/nothing.js")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
