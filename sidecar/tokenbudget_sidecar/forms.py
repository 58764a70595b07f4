"""multipart/form-data bodies of metered routes (image edits, audio transcriptions): their text fields.

Why by hand: the sidecar must read `model`, `stream`, `n`... from a form the SDK built, forward the body
byte for byte, and on a Downgrade change one field's value and nothing else. aiohttp's reader consumes
its stream and cannot re-emit it; the format is simple enough (RFC 7578: parts between `--boundary`
lines, each with headers, a blank line, then its bytes) to split the bytes we already hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_FIELD_BYTES = 64 * 1024  # a text field longer than this is not one we read (prompts are far shorter)
BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)


class BadForm(Exception):
    """The body is not the multipart form its Content-Type says: a 400."""


@dataclass
class Part:
    headers: bytes
    body: bytes

    @property
    def name(self) -> str | None:
        match = NAME.search(self.headers)
        return match.group(1).decode("utf-8", "replace") if match else None

    @property
    def is_file(self) -> bool:
        return b"filename=" in self.headers.lower()


@dataclass
class Form:
    boundary: bytes
    preamble: bytes
    parts: list[Part]
    epilogue: bytes
    fields: dict[str, str] = field(default_factory=dict)  # text fields (the last of a repeated name wins)

    def encode(self, changes: dict[str, str]) -> bytes:
        """The same bytes with the text fields in `changes` given new values (added when absent)."""
        out = [self.preamble]
        parts = self.parts + [Part(f'Content-Disposition: form-data; name="{name}"'.encode(), b"")
                              for name in changes if name not in self.fields]  # a field the app left out
        for part in parts:
            body = part.body
            if not part.is_file and part.name in changes:
                body = changes[part.name].encode()
            out.append(b"--" + self.boundary + b"\r\n" + part.headers + b"\r\n\r\n" + body + b"\r\n")
        out.append(b"--" + self.boundary + b"--" + self.epilogue)
        return b"".join(out)


def is_form(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


def parse(raw: bytes, content_type: str) -> Form:
    """Split `raw` into parts; raises BadForm when it is not a well-formed form."""
    match = BOUNDARY.search(content_type)
    if match is None:
        raise BadForm("multipart/form-data without a boundary")
    boundary = match.group(1).encode()
    delimiter = b"--" + boundary
    start = raw.find(delimiter)
    end = raw.rfind(delimiter + b"--")
    if start < 0 or end < start:
        raise BadForm("the multipart body has no closing boundary")
    if raw[end - 2:end] != b"\r\n":
        raise BadForm("the closing multipart boundary does not start a line")
    preamble, epilogue = raw[:start], raw[end + len(delimiter) + 2:]
    chunks = raw[start + len(delimiter):end - 2].split(b"\r\n" + delimiter)
    form = Form(boundary, preamble, [], epilogue)
    for chunk in chunks:
        if not chunk.startswith(b"\r\n"):
            raise BadForm("a multipart boundary line is not followed by CRLF")
        head, sep, body = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            raise BadForm("a multipart part has no blank line after its headers")
        part = Part(head, body)
        form.parts.append(part)
        if part.name is not None and not part.is_file and len(body) <= MAX_FIELD_BYTES:
            try:
                form.fields[part.name] = body.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return form
