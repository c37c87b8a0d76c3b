"""Stream the one part of a WADO-RS ``multipart/related`` answer to a file.

Constant memory: the body is read in chunks and written out as it comes; only a tail as
long as the boundary delimiter is held back (it may straddle two chunks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

MAX_HEADER_BYTES = 64 * 1024


class MultipartError(ValueError):
    """The answer is not one well-formed ``multipart/related`` part."""


def boundary_of(content_type: str) -> bytes | None:
    """The boundary parameter of a Content-Type header (None when absent)."""
    media, *params = (p.strip() for p in content_type.split(";"))
    if media.lower() != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {media or 'no content type'}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"').encode("latin-1")
    return None


def write_single_part(chunks: Iterable[bytes], boundary: bytes, out: BinaryIO) -> int:
    """Write the body of the first and only part to ``out``; returns its size in bytes.

    Raises MultipartError when the stream ends early or holds more than one part.
    """
    opener = b"--" + boundary
    delimiter = b"\r\n--" + boundary
    buf = bytearray()
    state = "preamble"
    written = 0
    it = iter(chunks)
    for chunk in it:
        if not chunk:
            continue
        buf += chunk
        if state == "preamble":
            start = buf.find(opener)
            if start < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("no multipart boundary in the first 64 kB")
                continue
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                if len(buf) - start > MAX_HEADER_BYTES:
                    raise MultipartError("part headers longer than 64 kB")
                continue
            del buf[: end + 4]
            state = "body"
        if state == "body":
            stop = buf.find(delimiter)
            if stop >= 0:
                out.write(buf[:stop])
                written += stop
                del buf[: stop + len(delimiter)]
                state = "after"
                break
            keep = len(delimiter) - 1
            if len(buf) > keep:
                n = len(buf) - keep
                out.write(buf[:n])
                written += n
                del buf[:n]
    if state != "after":
        raise MultipartError("the answer ended before its part did (truncated)")
    # what follows the delimiter: "--" closes the message; anything else is a second part
    for chunk in it:
        buf += chunk
        if len(buf) >= 2:
            break
    if len(buf) >= 2 and bytes(buf[:2]) != b"--":
        raise MultipartError("more than one part where one instance was asked for")
    for _ in it:  # drain, so the connection can be reused
        pass
    return written
