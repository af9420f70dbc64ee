"""Request bodies on the API, read here once for every endpoint: a chunked body (Transfer-Encoding: chunked,
no Content-Length) is read as any other, and `Content-Encoding: gzip` (Segment's and RudderStack's libraries send
it, RudderStack's by default) is inflated, so every view sees the JSON it was sent and its size limits apply to
the inflated body.

Inflation streams with a cap (settings.API_INFLATED_BODY_MAX_BYTES): a decompression bomb is refused with 413
once the cap is passed, never inflated whole; a plain body past the cap is 413 too. A body that is not valid gzip
is 400, an encoding the API does not take 415, each with the API's error shape. A gzip body is inflated only for
credentials that may pass (`costly_body_refusal`): 8 KB of gzip can cost a core 60 ms to inflate.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable, Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from personalization.authentication import costly_body_refusal
from personalization.errors import error_body

API_PATH_PREFIX = "/api/"
GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})
PLAIN_ENCODINGS = frozenset({"", "identity"})
READ_CHUNK_BYTES = 64 * 1024
# zlib's window bits for a gzip stream (header and trailer checked).
GZIP_WBITS = 16 + zlib.MAX_WBITS


class InflatedBodyTooLarge(Exception):
    pass


def gzip_inflate(chunks: Iterable[bytes], *, max_bytes: int) -> bytes:
    """The inflated bytes of a gzip stream (one member or several, as `gzip` writes them), read chunk by chunk,
    never inflating more than `max_bytes + 1`. Raises InflatedBodyTooLarge past `max_bytes` (of input or output),
    zlib.error when the bytes are not gzip or stop before the end of a member."""
    inflated = bytearray()
    read = 0
    decompressor = zlib.decompressobj(GZIP_WBITS)
    for chunk in chunks:
        read += len(chunk)
        if read > max_bytes:  # empty deflate blocks make input that inflates to nothing
            raise InflatedBodyTooLarge
        pending = chunk
        while pending:
            if decompressor.eof:  # the next gzip member
                decompressor = zlib.decompressobj(GZIP_WBITS)
            inflated += decompressor.decompress(pending, max_bytes + 1 - len(inflated))
            if len(inflated) > max_bytes:
                raise InflatedBodyTooLarge
            # Input held back by the output cap, or what follows the end of a member.
            pending = decompressor.unconsumed_tail or decompressor.unused_data
    if read and not decompressor.eof:
        raise zlib.error("the gzip stream ends before its end marker")
    return bytes(inflated)


def _request_chunks(request: HttpRequest) -> Iterator[bytes]:
    while chunk := request.read(READ_CHUNK_BYTES):
        yield chunk


class RequestBodyDecodingMiddleware:
    """Reads every request body to /api/ before any view (or authentication) does: within one cap (413 in the
    API's error shape past it, whatever the endpoint), chunked or not, gzip inflated."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PATH_PREFIX):
            return self.get_response(request)
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if encoding not in PLAIN_ENCODINGS | GZIP_ENCODINGS:
            return _error(
                415,
                f"Content-Encoding '{encoding}' is not supported; send gzip or no encoding.",
                "unsupported_content_encoding",
            )
        max_bytes = settings.API_INFLATED_BODY_MAX_BYTES
        if _declared_length(request) > max_bytes:  # refused before reading it
            return _error(413, f"The body must be at most {max_bytes // 1024} KB.", "payload_too_large", max_bytes)
        chunks = _body_chunks(request)
        if chunks is None:
            detail = "Send a Content-Length, or a chunked body to a server that decodes it."
            return _error(411, detail, "length_required")
        if encoding in GZIP_ENCODINGS and (refusal := costly_body_refusal(request)) is not None:
            return refusal
        try:
            if encoding in GZIP_ENCODINGS:
                body = gzip_inflate(chunks, max_bytes=max_bytes)
            else:
                body = _read_at_most(chunks, max_bytes=max_bytes)
        except InflatedBodyTooLarge:
            body_name = "inflated body" if encoding in GZIP_ENCODINGS else "body"
            detail = f"The {body_name} must be at most {max_bytes // 1024} KB."
            return _error(413, detail, "payload_too_large", max_bytes)
        except zlib.error as error:
            return _error(400, f"The body is not valid gzip: {error}.", "invalid_gzip")
        _replace_body(request, body)
        return self.get_response(request)


def _body_chunks(request: HttpRequest) -> Iterator[bytes] | None:
    """The body's chunks. A chunked body (no Content-Length) comes from the server's input, which gunicorn
    decodes and ends (`wsgi.input_terminated`); Django alone would read it as empty. None when the server does
    not end it, since reading on would wait for the client's next request."""
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not chunked or request.META.get("CONTENT_LENGTH"):
        return _request_chunks(request)
    environ = getattr(request, "environ", {})
    if not environ.get("wsgi.input_terminated"):
        return None
    server_input = environ["wsgi.input"]
    return iter(lambda: bytes(server_input.read(READ_CHUNK_BYTES)), b"")


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0  # as Django reads it


def _read_at_most(chunks: Iterable[bytes], *, max_bytes: int) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise InflatedBodyTooLarge
    return bytes(body)


def _replace_body(request: HttpRequest, body: bytes) -> None:
    """From here on the request reads as if it had been sent whole and uncompressed."""
    request._body = body  # type: ignore[attr-defined]
    request._stream = io.BytesIO(body)  # type: ignore[attr-defined]
    request._read_started = False  # type: ignore[attr-defined]
    request.META["CONTENT_LENGTH"] = str(len(body))
    request.META.pop("HTTP_CONTENT_ENCODING", None)
    request.META.pop("HTTP_TRANSFER_ENCODING", None)


def _error(status: int, detail: str, code: str, max_bytes: int | None = None) -> JsonResponse:
    field_message = f"At most {max_bytes} bytes (inflated, if sent compressed)." if max_bytes is not None else detail
    return JsonResponse(error_body(detail=detail, code=code, errors={"body": [field_message]}), status=status)
