"""What every progressive codec plugin shares: its error type and the J2K header parser."""

from __future__ import annotations

import struct
from dataclasses import dataclass


class CodecError(Exception):
    """A decoder failed on a frame (corrupt, truncated or unsupported stream)."""


class FileFrame:
    """An encoded frame left in its file: the (offset, length) spans of its fragments,
    read on demand, so that a film's codestream is not held in memory between decodes
    (``start``/``length`` select a part of the joined fragments, e.g. the codestream
    inside a JP2 wrapper)."""

    def __init__(
        self, path: str, spans: tuple[tuple[int, int], ...], start: int = 0, length: int = -1
    ) -> None:
        self.path = path
        self.spans = tuple(spans)
        total = sum(n for _, n in self.spans)
        self.start = int(start)
        self.size = total - self.start if length < 0 else int(length)

    def sub(self, start: int, length: int) -> FileFrame:
        return FileFrame(self.path, self.spans, self.start + start, length)

    def readinto(self, pos: int, dest: memoryview) -> int:
        """Fill ``dest`` with bytes ``pos ..`` of the frame (fewer at its end), straight
        from the file (no intermediate copy); returns the count."""
        n = max(0, min(len(dest), self.size - pos))
        done = 0
        want = self.start + pos
        with open(self.path, "rb", buffering=0) as fh:
            for offset, length in self.spans:
                if done >= n:
                    break
                if want >= length:
                    want -= length
                    continue
                fh.seek(offset + want)
                take = min(length - want, n - done)
                got = 0
                while got < take:
                    k = fh.readinto(dest[done + got : done + take])
                    if not k:
                        raise CodecError("file ends inside the pixel data (truncated)")
                    got += k
                done += take
                want = 0
        return done

    def read(self, pos: int, n: int) -> bytes:
        """Bytes ``pos .. pos + n`` of the frame (fewer at its end)."""
        buf = bytearray(max(0, min(n, self.size - pos)))
        got = self.readinto(pos, memoryview(buf))
        return bytes(buf[:got]) if got < len(buf) else bytes(buf)

    def head(self, n: int = 1 << 20) -> bytes:
        return self.read(0, n)

    def tobytes(self) -> bytes:
        return self.read(0, self.size)


def frame_bytes(frame: bytes | FileFrame) -> bytes:
    return frame.tobytes() if isinstance(frame, FileFrame) else frame


@dataclass(frozen=True)
class J2KHeader:
    """The main header of a JPEG 2000 / HTJ2K codestream (SIZ and COD)."""

    width: int  # Xsiz - XOsiz
    height: int
    x_offset: int
    y_offset: int
    tile_width: int
    tile_height: int
    components: int
    precision: int  # of component 0
    signed: bool
    subsampled: bool  # a component with XRsiz or YRsiz != 1
    levels: int  # DWT decomposition levels (COD, or component 0's COC)
    progression: int  # 0 LRCP, 1 RLCP, 2 RPCL, 3 PCRL, 4 CPRL
    layers: int
    high_throughput: bool  # a CAP marker (Part 15) is present

    @property
    def tiles(self) -> int:
        nx = -(-(self.width + self.x_offset) // self.tile_width)
        ny = -(-(self.height + self.y_offset) // self.tile_height)
        return nx * ny


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def j2k_codestream(frame: bytes | FileFrame) -> bytes | FileFrame:
    """The raw codestream of a DICOM JPEG 2000 frame (a JP2 wrapper, which some writers
    add against the standard, is removed)."""
    first = frame.head(1 << 16) if isinstance(frame, FileFrame) else frame
    total = frame.size if isinstance(frame, FileFrame) else len(frame)
    if first[:4] == b"\xff\x4f\xff\x51":
        return frame
    if first.startswith(_JP2_SIGNATURE):
        pos = 0
        while pos + 8 <= len(first):
            size, box = struct.unpack(">I4s", first[pos : pos + 8])
            head = 8
            if size == 1:
                size = struct.unpack(">Q", first[pos + 8 : pos + 16])[0]
                head = 16
            elif size == 0:
                size = total - pos
            if box == b"jp2c":
                if isinstance(frame, FileFrame):
                    return frame.sub(pos + head, size - head)
                return frame[pos + head : pos + size]
            if size < head:
                break
            pos += size
    raise CodecError("not a JPEG 2000 codestream (no SOC/SIZ marker at the start)")


def parse_j2k_header(stream: bytes | FileFrame) -> J2KHeader:
    """SIZ, COD (and COC for component 0, CAP) from the main header; ``CodecError`` when
    the header is malformed."""
    if isinstance(stream, FileFrame):
        stream = stream.head()
    if stream[:4] != b"\xff\x4f\xff\x51":
        raise CodecError("not a JPEG 2000 codestream (no SOC/SIZ marker at the start)")
    try:
        pos = 4
        length = struct.unpack(">H", stream[pos : pos + 2])[0]
        siz = stream[pos + 2 : pos + length]
        (_rsiz, xsiz, ysiz, xo, yo, xt, yt, _xto, _yto, csiz) = struct.unpack(
            ">HIIIIIIIIH", siz[:36]
        )
        comps = [struct.unpack(">BBB", siz[36 + 3 * i : 39 + 3 * i]) for i in range(csiz)]
        pos += length
        levels = progression = layers = None
        coc_levels = None
        ht = False
        while pos + 4 <= len(stream):
            marker, length = struct.unpack(">HH", stream[pos : pos + 4])
            body = stream[pos + 4 : pos + 2 + length]
            if marker == 0xFF90:  # SOT: the main header ends
                break
            if marker == 0xFF52:  # COD
                progression, layers = body[1], struct.unpack(">H", body[2:4])[0]
                levels = body[5]
            elif marker == 0xFF53:  # COC
                comp = body[0] if csiz < 257 else struct.unpack(">H", body[:2])[0]
                if comp == 0:
                    coc_levels = body[2 if csiz < 257 else 3]
            elif marker == 0xFF50:  # CAP (Part 15)
                ht = True
            pos += 2 + length
    except (struct.error, IndexError) as exc:
        raise CodecError(f"malformed JPEG 2000 main header ({exc})") from None
    if levels is None or not comps:
        raise CodecError("JPEG 2000 main header without COD or components")
    ssiz = comps[0][0]
    return J2KHeader(
        width=xsiz - xo,
        height=ysiz - yo,
        x_offset=xo,
        y_offset=yo,
        tile_width=xt,
        tile_height=yt,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        subsampled=any(c[1] != 1 or c[2] != 1 for c in comps),
        levels=int(coc_levels if coc_levels is not None else levels),
        progression=int(progression or 0),
        layers=int(layers or 1),
        high_throughput=ht,
    )
