"""Request bodies: size-limited (small ones into memory, uploads streamed to a file on
disk) and parsed from JSON."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import BadRequest, PayloadTooLarge


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
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON", {"reason": str(exc)}) from None


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit",
            {"limit_bytes": limit, "got_bytes": int(declared)},
        )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge("request body exceeds the limit", {"limit_bytes": limit})


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes."""
    _check_declared(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def stream_body_to_file(request: Request, limit: int, directory: Path) -> Path:
    """Write a raw body (e.g. `application/x-hdf5`) to a temp file, at most `limit` bytes."""
    _check_declared(request, limit)
    fd, name = tempfile.mkstemp(suffix=".h5", dir=directory)
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                fh.write(chunk)
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
            fh.write(data[start:end])
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
        _check_declared(request, limit)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            try:
                parser.write(chunk)
            except BadRequest:
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
