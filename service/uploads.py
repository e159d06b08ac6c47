"""Multipart uploads parsed while they stream, so limits hold before the body is read.

FastAPI's `UploadFile` spools the whole body before a handler runs; here the request stream
feeds python-multipart's incremental parser and the file part flows straight on (into the
artifact storage, which hashes and counts it).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import TooLarge

MAX_FIELD_BYTES = 64 * 1024
# Multipart framing and text fields on top of the file part itself.
_FRAMING_BYTES = 1024 * 1024


_EXTENDED_FILENAME = re.compile(r"filename\*\s*=\s*([^;]+)", re.IGNORECASE)


def _extended_filename(disposition: str) -> str:
    """RFC 5987's `filename*=UTF-8''%C3%A9.png` (which python-multipart drops); "" when
    absent or malformed."""
    found = _EXTENDED_FILENAME.search(disposition)
    if found is None:
        return ""
    charset, _, rest = found.group(1).strip().strip('"').partition("'")
    _, _, encoded = rest.partition("'")
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return ""


def multipart_body(properties: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The OpenAPI request body of an upload endpoint, which parses its multipart body
    itself (so FastAPI cannot describe it): a required `file` and `name`, and `properties`."""
    schema = {"type": "object", "required": ["file", "name"], "properties": properties}
    return {
        "requestBody": {
            "content": {"multipart/form-data": {"schema": schema}},
            "required": True,
        }
    }


def streams_own_body() -> None:
    """A route dependency that marks an endpoint reading its own body while it streams, with
    its own limits (service.guard does not cap or buffer it)."""


def refuse_declared_length(request: Request, *, limit: int, message: str) -> None:
    """TooLarge at once when the declared body is over `limit` (plus framing), before any of
    it is read; bodies without a length are held to the limit while they stream."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _FRAMING_BYTES:
        raise TooLarge(message)


class MultipartUpload:
    """One file part (`file_field`) streamed; text fields collected as they pass."""

    def __init__(self, request: Request, *, file_field: str = "file", max_files: int = 1) -> None:
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        if content_type != b"multipart/form-data" or b"boundary" not in params:
            raise HTTPException(415, "upload as multipart/form-data with a 'file' part")
        self.request = request
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.filenames: list[str] = []
        self.files_seen = 0
        self.max_files = max_files
        self._complete = False
        # File bytes waiting to be consumed; None marks the start of the next file part.
        self._pending: list[bytes | None] = []
        self._part: dict[str, str] = {}
        self._name = ""
        self._header = [b"", b""]
        self._field_value = bytearray()
        self._parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._header.__setitem__(
                    0, self._header[0] + d[s:e]
                ),
                "on_header_value": lambda d, s, e: self._header.__setitem__(
                    1, self._header[1] + d[s:e]
                ),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes; reading to the end also collects every field."""
        async for piece in self._pieces():
            if piece is not None:
                yield piece
        if self.files_seen != 1:
            raise HTTPException(422, f"exactly one '{self.file_field}' part is required")

    async def save_files(self, directory: Path, *, max_bytes: int) -> list[tuple[str, Path]]:
        """Every file part to its own file in `directory`: (client file name, path) each.

        413 as soon as the parts together pass `max_bytes`.
        """
        saved: list[tuple[str, Path]] = []
        total = 0
        handle = None
        try:
            async for piece in self._pieces():
                if piece is None:
                    if handle is not None:
                        handle.close()
                    path = directory / f"part{len(saved):06d}"
                    saved.append((self.filenames[len(saved)], path))
                    handle = path.open("wb")
                    continue
                total += len(piece)
                if total > max_bytes:
                    raise HTTPException(
                        413, f"the upload is larger than the {max_bytes}-byte limit"
                    )
                assert handle is not None
                handle.write(piece)
        finally:
            if handle is not None:
                handle.close()
        if not saved:
            raise HTTPException(422, f"at least one '{self.file_field}' part is required")
        return saved

    async def _pieces(self) -> AsyncIterator[bytes | None]:
        """File bytes as they arrive, None before each file part; fields collected meanwhile."""
        try:
            async for chunk in self.request.stream():
                self._parser.write(chunk)
                while self._pending:
                    yield self._pending.pop(0)
            self._parser.finalize()
        except HTTPException:
            raise
        except Exception as error:  # the parser's own errors: a malformed body
            raise HTTPException(400, f"malformed multipart body: {error}") from error
        while self._pending:
            yield self._pending.pop(0)
        if not self._complete:
            # A cut-off upload must not be stored as if it were the whole file.
            raise HTTPException(400, "the upload ended before the multipart closing boundary")

    def _end(self) -> None:
        self._complete = True

    def _part_begin(self) -> None:
        self._part = {}
        self._name = ""
        self._field_value = bytearray()

    def _header_end(self) -> None:
        name, value = (h.decode("latin-1") for h in self._header)
        self._part[name.lower()] = value
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._part.get("content-disposition", ""))
        self._name = params.get(b"name", b"").decode()
        if self._name == self.file_field:
            self.files_seen += 1
            if self.files_seen > self.max_files:
                allowed = (
                    f"exactly one '{self.file_field}' part is allowed"
                    if self.max_files == 1
                    else f"at most {self.max_files} '{self.file_field}' parts are allowed"
                )
                raise HTTPException(422, allowed)
            disposition = self._part.get("content-disposition", "")
            self.filename = params.get(b"filename", b"").decode() or _extended_filename(disposition)
            self.filenames.append(self.filename)
            self._pending.append(None)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == self.file_field:
            self._pending.append(bytes(data[start:end]))
            return
        self._field_value += data[start:end]
        if len(self._field_value) > MAX_FIELD_BYTES:
            raise HTTPException(
                413, f"form field '{self._name}' is longer than {MAX_FIELD_BYTES} bytes"
            )

    def _part_end(self) -> None:
        if self._name and self._name != self.file_field:
            self.fields[self._name] = self._field_value.decode("utf-8", errors="replace")
