"""Request bodies: size-limited (small ones into memory, uploads streamed to a file on
disk), inflated as a stream when they carry a Content-Encoding, and parsed from JSON.

Every limit applies twice: to the bytes on the wire and to the decoded bytes, so a
1 MB gzip body cannot inflate to gigabytes before anything looks at it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import BadRequest, PayloadTooLarge, StorageFull, UnsupportedMediaType

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def parse_json(body: bytes, what: str = "body") -> Any:
    """``body`` parsed as JSON, or a 400 that says why.

    orjson, because CSI batches are ~36 KB of JSON numbers per fingerprint and the
    standard library takes twice as long over them (bench/locate.md). What orjson
    refuses but Python's ``json.dumps`` writes (NaN, Infinity, huge integers) is
    parsed again by the standard library, so it reaches the validators and gets
    their precise message ("csi contains NaN ...") rather than "not valid JSON".
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        # orjson stops at 1024 levels; the standard library then runs out of stack.
        raise BadRequest(f"{what} is nested too deeply", {"max_depth": 1024}) from None
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON", {"reason": str(exc)}) from None


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit",
            {"limit_bytes": limit, "got_bytes": int(declared)},
        )


def _too_large(limit: int, what: str = "request body") -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} exceeds the limit", {"limit_bytes": limit})


class _Inflater:
    """Streamed gzip/deflate decoding that never holds more than `limit` decoded bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0
        self._z = zlib.decompressobj(_WBITS[encoding])

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        try:
            while data:
                if self._z.eof:
                    raise BadRequest(f"data after the end of the {self.encoding} stream")
                piece = self._z.decompress(data, self.limit - self.size + 1)
                self.size += len(piece)
                if self.size > self.limit:
                    raise _too_large(self.limit, f"decoded ({self.encoding}) body")
                out.append(piece)
                data = self._z.unconsumed_tail
        except zlib.error as exc:
            raise BadRequest(f"cannot decode {self.encoding} body", {"reason": str(exc)}) from None
        return out

    def finish(self) -> None:
        if not self._z.eof:
            raise BadRequest(f"{self.encoding} body is truncated")


def _content_encoding(request: Request) -> str:
    encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
    if encoding != "identity" and encoding not in _WBITS:
        raise UnsupportedMediaType(
            f"unsupported content encoding {encoding!r}",
            {"expected": ["identity", "gzip", "deflate"]},
        )
    return encoding


async def body_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's decoded chunks; 413 once the wire or the decoded size passes `limit`."""
    _check_declared(request, limit)
    encoding = _content_encoding(request)
    inflater = _Inflater(encoding, limit) if encoding != "identity" else None
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if inflater is None:
            yield chunk
        else:
            for piece in inflater.feed(chunk):
                yield piece
    if inflater is not None:
        inflater.finish()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (decoded) body, refusing (413) as soon as it passes `limit` bytes."""
    chunks = [chunk async for chunk in body_chunks(request, limit)]
    return b"".join(chunks)


def _write(fh: BinaryIO, data: bytes) -> None:
    """Write an upload's bytes; a full disk is the server's problem (503), not a 500."""
    try:
        fh.write(data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StorageFull("no space left for the upload; retry later") from None
        raise


async def stream_body_to_file(request: Request, limit: int, directory: Path) -> Path:
    """Write a raw body (e.g. `application/x-hdf5`) to a temp file, at most `limit` bytes."""
    _check_declared(request, limit)
    fd, name = tempfile.mkstemp(suffix=".h5", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in body_chunks(request, limit):
                _write(fh, chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


async def stream_multipart(
    request: Request, limit: int, directory: Path, file_field: str = "data"
) -> tuple[Path | None, dict[str, str]]:
    """Parse a multipart form as it arrives: the file part goes to disk, fields to a dict.

    Returns (path of the uploaded file or None, the other fields). The whole body is
    limited to `limit` bytes (413 beyond it), so a huge upload never fills memory or disk.
    """
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary", {"expected": "multipart/form-data"})

    fields: dict[str, str] = {}
    state: dict[str, Any] = {"name": None, "is_file": False, "buf": bytearray(), "hdr": b""}
    headers: dict[bytes, bytes] = {}
    fd, name = tempfile.mkstemp(suffix=".h5", dir=directory)
    upload = Path(name)
    got_file = False
    fh = os.fdopen(fd, "wb")  # closed below; the parser callbacks write to it

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hdr"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["hdr"].lower()
        headers[key] = headers.get(key, b"") + data[start:end]

    def on_header_end() -> None:
        state["hdr"] = b""

    def on_headers_finished() -> None:
        nonlocal got_file
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        field = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = field
        state["is_file"] = field == file_field
        state["buf"] = bytearray()
        if state["is_file"]:
            if got_file:
                raise BadRequest(f"more than one '{file_field}' part in the form")
            got_file = True
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            _write(fh, data[start:end])
        else:
            state["buf"] += data[start:end]
            if len(state["buf"]) > 4096:
                raise BadRequest(f"form field {state['name']!r} is longer than 4096 bytes")

    def on_part_end() -> None:
        if not state["is_file"] and state["name"]:
            fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body_chunks(request, limit):
            try:
                parser.write(chunk)
            except (BadRequest, StorageFull):
                raise
            except Exception as exc:
                raise BadRequest("malformed multipart body", {"reason": str(exc)}) from None
        parser.finalize()
    except BaseException:
        fh.close()
        upload.unlink(missing_ok=True)
        raise
    fh.close()
    if not got_file:
        upload.unlink(missing_ok=True)
        return None, fields
    return upload, fields
