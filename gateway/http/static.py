"""The web UI (gateway/web/): publish and play pages, served as plain files."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.http.errors import HttpError

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


async def redirect_to_web(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/web/")


async def _web_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def _web_file(request: web.Request) -> web.StreamResponse:
    """A file of the UI, or our JSON 404 (aiohttp's static route answers an empty one)."""
    name = request.match_info["name"]
    path = WEB_DIR / name
    try:
        # No symlinks and nothing outside WEB_DIR, however the name is spelled.
        found = (
            "\x00" not in name
            and not path.is_symlink()
            and path.resolve().is_relative_to(WEB_DIR)
            and path.is_file()
        )
    except (OSError, ValueError):  # a name too long for the file system, and the like
        found = False
    if not found:
        raise HttpError(404, "not_found", "no such file")
    return web.FileResponse(path)


def add_static_ui(app: web.Application) -> None:
    """`/` and `/web` redirect to `/web/`; `/web/NAME` serves gateway/web/NAME."""
    app.router.add_get("/", redirect_to_web)
    if not WEB_DIR.is_dir():
        return
    app.router.add_get("/web", redirect_to_web)
    if (WEB_DIR / "index.html").is_file():
        app.router.add_get("/web/", _web_index)
    app.router.add_get("/web/{name:.+}", _web_file)
