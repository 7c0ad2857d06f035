"""What a request may carry, checked before any handler work: an uploaded image's size, a
whole number in range, a body's length; and how a refused request is reported (one line).
"""
import base64
import functools
import logging
import math
import os

import gradio as gr

from cir_core.inputs import QueryError

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one uploaded image, however it arrives (file, data URL)
# A request body: one image as base64 (4/3 of its bytes) plus room for the other fields.
MAX_REQUEST_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + (1 << 20)


def uploaded_reference(payload) -> str | bytes | None:
    """The reference as uploaded: the file of an unprocessed gr.Image payload, or a base64 data URL's bytes,
    each at most MAX_UPLOAD_BYTES (QueryError otherwise, before anything is decoded).

    Events reading the reference skip gradio's preprocessing (preprocess=False), which
    would open the file itself and fail with a bare "Error" on corrupt files or
    decompression bombs; the engine's checks give messages that name the problem. Paths
    are still confined to gradio's upload folder, which gradio checks before any handler;
    gradio's max_file_size bounds uploaded files, not data URLs in a request's body.
    """
    if not payload:
        return None
    if not isinstance(payload, dict):
        raise QueryError(f"the image must be an uploaded file (a gradio file payload), got {type(payload).__name__}")
    too_large = f"the image is larger than the {MAX_UPLOAD_BYTES // (1 << 20)} MB upload limit"
    if payload.get("path"):
        path = payload["path"]
        if isinstance(path, str) and os.path.isfile(path) and os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise QueryError(too_large)
        return path
    url = payload.get("url") or ""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    header, _, encoded = url.partition(",")
    if not header.endswith(";base64"):
        raise QueryError("an image given as a data: URL must be base64 encoded (data:image/png;base64,...)")
    if len(encoded) > 4 * math.ceil(MAX_UPLOAD_BYTES / 3):  # base64 length is known before decoding
        raise QueryError(too_large)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise QueryError("the data: URL's image is not valid base64") from None


def whole_number(value, what: str, low: int, high: int) -> int:
    """`value` as an int in [low, high]; QueryError (a message, not a traceback) for anything else."""
    shown = f"{value!r:.50}"  # an int of 10**400 has 401 digits
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QueryError(f"{what} must be a whole number, got {shown}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise QueryError(f"{what} must be a whole number, got {shown}")
    if not low <= value <= high:  # compared as given: float() of a huge int overflows
        raise QueryError(f"{what} must be between {low} and {high}, got {shown}")
    return int(value)


def user_errors(handler):
    """Show bad input as a visible error message; the app keeps serving.

    Bad input is the user's to fix: the server logs one line for it, no traceback. An
    unexpected failure logs its traceback once (here, not again by gradio).
    """

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (QueryError, ValueError, FileNotFoundError) as error:
            logger.info("%s refused: %s", handler.__name__, f"{error}"[:300])
            raise gr.Error(str(error), title="Cannot run this query", print_exception=False) from None
        except Exception as error:
            logger.exception("unexpected failure in %s", handler.__name__)
            raise gr.Error(f"internal error ({type(error).__name__}): {error}", print_exception=False) from None

    return wrapped


class RequestTooLarge(Exception):
    """A request body grew past RequestSizeLimit's bound while it was being read."""


class RequestSizeLimit:
    """ASGI middleware: a request whose body exceeds `max_bytes` is answered 413 before more of it is read.

    gradio bounds uploaded files (max_file_size), not other bodies: an image sent as a data
    URL inside a /search request would otherwise be read whole, however large.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received, started = 0, False

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a body sent without a length (chunked)
                raise RequestTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except RequestTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = f"request body too large: at most {self.max_bytes} bytes".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
