"""`GET /`: a page to try the service in a browser (`deployments/web/index.html`).

The page uses the public API only (`v1/soundtracks:stream`, and `v1/soundtracks` with `format=mp4`) through
relative URLs; a `<base>` set from the request's `root_path` (Ray Serve's `route_prefix`) makes them resolve
under the application's prefix, whether the page was opened as `/fused` or `/fused/`.
"""

from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).parent / "web" / "index.html"


def add_page(app: FastAPI) -> None:
    html = PAGE.read_text()

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(html.replace("<head>", f'<head>\n<base href="{escape(root, quote=True)}/">', 1))
