"""The try-it page: ``GET /`` and ``GET /ui`` lead to ``/ui/``, a static page that calls the public HTTP API.

The page's three files ship in this package (package data, see pyproject.toml) and are served as they
are: no build step, nothing fetched from elsewhere. Every URL in them is relative (``app.js``,
``../v1/models``), so the page works wherever the application is mounted (a Ray Serve route prefix, a
proxy path); that is why ``/`` and ``/ui`` redirect to the relative ``ui/`` rather than an absolute path.

The page is open even where API keys are configured: it holds no secret and no data, and every API
call it makes carries the key the user types into it (kept in the tab's sessionStorage at most), so the
API stays closed to callers without a key. Were the page itself keyed, a browser could not open it.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
HEADERS = {
    # The page loads only its own files, calls only this origin, and shows images it is given as data:
    # (the overlay) or blob: (the chosen file) URLs; it may not be framed (a key is typed into it).
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidate, so a new deployment's page is seen at once
}

router = APIRouter(include_in_schema=False)


@cache
def page_file(name: str) -> bytes:
    return files(__name__).joinpath(name).read_bytes()


def _file_response(name: str) -> Response:
    return Response(page_file(name), media_type=MEDIA_TYPES[name], headers=HEADERS)


@router.get("/")
@router.get("/ui")
async def to_page() -> RedirectResponse:
    # Relative, so the browser keeps whatever prefix it reached us under. Starlette answers a mount
    # point without its slash (``/segmentation``) with a redirect to ``/segmentation/`` first.
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui/")
async def page() -> Response:
    return _file_response("index.html")


@router.get("/ui/app.js")
async def script() -> Response:
    return _file_response("app.js")


@router.get("/ui/style.css")
async def style() -> Response:
    return _file_response("style.css")
