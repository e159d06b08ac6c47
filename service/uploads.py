"""Multipart uploads parsed while they stream, so limits hold before the body is read.

FastAPI's `UploadFile` spools the whole body before a handler runs; here the request stream
feeds python-multipart's incremental parser and the file part flows straight on (into the
artifact storage, which hashes and counts it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 64 * 1024


class MultipartUpload:
    """One file part (`file_field`) streamed; text fields collected as they pass."""

    def __init__(self, request: Request, *, file_field: str = "file") -> None:
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        if content_type != b"multipart/form-data" or b"boundary" not in params:
            raise HTTPException(415, "upload as multipart/form-data with a 'file' part")
        self.request = request
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.files_seen = 0
        self._pending: list[bytes] = []
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
            },
        )

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes; reading to the end also collects every field."""
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
        if self.files_seen != 1:
            raise HTTPException(422, f"exactly one '{self.file_field}' part is required")

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
            if self.files_seen > 1:
                raise HTTPException(422, f"exactly one '{self.file_field}' part is allowed")
            self.filename = params.get(b"filename", b"").decode()

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
