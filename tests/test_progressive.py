"""Resolution-progressive reading (pipeline.read.progressive + pipeline.read.codecs):
reduced levels and regions agree with the full decode, DICOM grey semantics are the full
path's, corrupt streams raise a typed error, and other syntaxes keep the full path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from legalign.models.crops import crop_matrix, letterbox_matrix, warp
from legalign.pipeline.errors import InputError
from legalign.pipeline.read.codecs import openjpeg, pillow_j2k, pillow_jpeg
from legalign.pipeline.read.codecs.base import CodecError, j2k_codestream, parse_j2k_header
from legalign.pipeline.read.dicom import check_header, read_dicom, read_header
from legalign.pipeline.read.progressive import DecodeError, open_progressive
from legalign.training.synth.dicom_archive import DicomOptions, htj2k_available, write_film_dicom
from legalign.training.synth.film import generate_film

needs_openjpeg = pytest.mark.skipif(
    not openjpeg.is_available(), reason="no OpenJPEG >= 2.5 library (Pillow's or the system's)"
)
needs_htj2k = pytest.mark.skipif(
    not htj2k_available(), reason="no HTJ2K encoder (the optional imagecodecs package)"
)


@pytest.fixture(scope="module")
def film():
    return generate_film(5, size="small")  # 954 x 352, odd-sized levels below 1/2


def _write(tmp: Path, film, name: str, **opts) -> str:
    path = tmp / f"{name}.dcm"
    write_film_dicom(path, film, DicomOptions(**opts), index=0, seed=5)
    return str(path)


def _open(path: str, **kw):
    header = read_header(path)
    check_header(header, path, 80_000_000)
    return open_progressive(path, header, **kw)


def _close(a: np.ndarray, b: np.ndarray, mean: float, p99: float, edge: int = 0) -> None:
    """Mean and 99th percentile of |a - b|, ``edge`` pixels from the border left out (the
    reference resampling fills outside the film with 0 there)."""
    assert a.shape == b.shape
    if edge:
        a, b = a[edge:-edge, edge:-edge], b[edge:-edge, edge:-edge]
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert d.mean() <= mean, d.mean()
    assert np.percentile(d, 99) <= p99, np.percentile(d, 99)


# ---------------------------------------------------------------- JPEG 2000
@needs_openjpeg
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("bits", [12, 16])
def test_j2k_region_and_levels_match_full_decode(tmp_path, film, photometric, bits):
    path = _write(
        tmp_path, film, "f", transfer_syntax="j2k", bits_stored=bits, photometric=photometric
    )
    full = read_dicom(path).pixels
    pf = _open(path, overview_height=200)
    assert pf is not None and pf.codec_name == "openjpeg"
    assert (pf.height, pf.width) == full.shape
    assert pf.overview.level == 2  # 954 rows: level 2 has 239 >= 200, level 3 119 < 200
    # a full-resolution region is the full decode's region, value for value (the same
    # modality LUT, VOI window and MONOCHROME1 inversion, through the grey table)
    box = (37, 101, 301, 480)
    part = pf.region(0, box)
    assert np.array_equal(part.pixels, full[101:480, 37:301])
    # each reduced level is the full decode resampled onto that level's grid
    for level in (1, 2, 3):
        got = pf.level(level)
        assert got.pixels.shape == pf.level_shape(level)
        want = warp(full, got.matrix, got.pixels.shape)
        # a box-averaged reference: the 5/3 low-pass keeps edges sharper (collimation,
        # markers), hence the loose 99th percentile; the exact check is the next test
        _close(got.pixels, want, mean=0.03, p99=0.25, edge=2)
    # a region at a reduced level is the whole level's region
    part = pf.region(1, box)
    whole1 = pf.level(1).pixels
    gx0 = int(round(pf.level_matrix(1)[0, 2] - part.matrix[0, 2]))
    gy0 = int(round(pf.level_matrix(1)[1, 2] - part.matrix[1, 2]))
    h, w = part.pixels.shape
    assert np.array_equal(part.pixels, whole1[gy0 : gy0 + h, gx0 : gx0 + w])


def _lift53(x: np.ndarray, axis: int) -> np.ndarray:
    """The reversible 5/3 low-pass of JPEG 2000 (lifting, symmetric extension) along one
    axis, written out from ISO 15444-1 Annex F."""
    x = np.moveaxis(x.astype(np.int64), axis, 0)
    n = x.shape[0]
    ev, od = x[0::2], x[1::2]
    right = np.concatenate([ev[1:], ev[-1:]]) if n % 2 == 0 else ev[1:]
    d = od - np.floor_divide(ev[: len(od)] + right[: len(od)], 2)
    dl = np.concatenate([d[:1], d])[: len(ev)]
    dr = np.concatenate([d, d[-1:]])[: len(ev)]
    return np.moveaxis(ev + np.floor_divide(dl + dr + 2, 4), 0, axis)


@needs_openjpeg
@pytest.mark.parametrize("shape", [(954, 352), (301, 203)])
def test_j2k_reduced_levels_are_the_dwt_of_the_full_decode(film, shape):
    """Lossless JPEG 2000: level k is exactly the k-fold 5/3 low-pass of the full image."""
    from openjpeg.utils import encode_array

    img = np.ascontiguousarray(film.image[: shape[0], : shape[1]])
    stream = encode_array(img, bits_stored=12)
    full, _ = openjpeg.decode(stream)
    assert np.array_equal(full, img)
    x = img.astype(np.int64)
    for level in (1, 2, 3):
        x = _lift53(_lift53(x, 0), 1)
        got, _ = openjpeg.decode(stream, level)
        assert np.array_equal(got, np.clip(x, 0, 4095))


@needs_openjpeg
def test_j2k_warp_matches_full_path_warp(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    full = read_dicom(path).pixels
    pf = _open(path, overview_height=200)
    for centre, side, flip in (((120, 300), 180, False), ((250, 700), 150, True)):
        A = crop_matrix(centre, side, 64, flip)
        _close(pf.warp(A, (64, 64)), warp(full, A, (64, 64)), mean=0.002, p99=0.02)
    # the coarse canvas: the same blocks averaged over the level-2 overview's interpolant
    A = letterbox_matrix(pf.height, pf.width, 128, 64)
    _close(pf.warp(A, (128, 64)), warp(full, A, (128, 64)), mean=0.002, p99=0.03)
    pf.level_margin = 0  # crops from the overview too
    A = crop_matrix((200, 400), 240, 64, False)
    _close(pf.warp(A, (64, 64)), warp(full, A, (64, 64)), mean=0.006, p99=0.08)
    # level-0 crops (margin large enough) are the full path's crops exactly
    pf.level_margin = 10
    A = crop_matrix((200, 400), 120, 64, False)
    assert np.allclose(pf.warp(A, (64, 64)), warp(full, A, (64, 64)), atol=1e-6)


@needs_openjpeg
def test_j2k_multi_fragment_is_the_same_film(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame], fragments_per_frame=5)
    multi = tmp_path / "multi.dcm"
    ds.save_as(multi, enforce_file_format=True)
    assert len(list(pydicom.encaps.generate_fragments(pydicom.dcmread(multi).PixelData))) > 1
    a, b = _open(path, overview_height=200), _open(str(multi), overview_height=200)
    assert np.array_equal(a.overview.pixels, b.overview.pixels)
    assert np.array_equal(
        a.region(0, (0, 0, 200, 300)).pixels, b.region(0, (0, 0, 200, 300)).pixels
    )


@needs_openjpeg
def test_voi_lut_modality_lut_and_no_voi(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=12)
    ds = pydicom.dcmread(path)
    # modality LUT (rescale) and a VOI LUT sequence instead of the window
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.sqrt(np.linspace(0.0, 1.0, 4096)) * 65535])
    ds.VOILUTSequence = [item]
    del ds.WindowCenter, ds.WindowWidth
    lut = tmp_path / "lut.dcm"
    ds.save_as(lut, enforce_file_format=True)
    full = read_dicom(str(lut)).pixels
    pf = _open(str(lut), overview_height=200)
    assert np.array_equal(pf.region(0, (0, 0, 352, 954)).pixels, full)
    # no VOI at all: min-max, by the overview's range (documented), close to the full path
    del ds.VOILUTSequence
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    full = read_dicom(str(plain)).pixels
    pf = _open(str(plain), overview_height=200)
    _close(pf.region(0, (0, 0, 352, 954)).pixels, full, mean=0.01, p99=0.03)


@needs_openjpeg
def test_pillow_fallback_decodes_the_same_levels(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    stream = j2k_codestream(
        next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    )
    header = parse_j2k_header(stream)
    assert (header.width, header.height, header.precision, header.levels) == (352, 954, 16, 5)
    for level in (0, 1, 2, 3):  # 954 / 8 = 119.25: Pillow's own rounding would fail here
        a, _ = openjpeg.decode(stream, level)
        b, _ = pillow_j2k.decode(stream, level)
        assert np.array_equal(a, b)


# ---------------------------------------------------------------- HTJ2K
@needs_openjpeg
@needs_htj2k
def test_htj2k_reads_progressively(tmp_path, film):
    path = _write(
        tmp_path, film, "f", transfer_syntax="htj2k", bits_stored=16, photometric="MONOCHROME1"
    )
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.201"
    full = read_dicom(path).pixels  # the full path (pydicom + pylibjpeg-openjpeg)
    pf = _open(path, overview_height=200)
    assert pf is not None and pf.codec_name == "openjpeg"
    assert np.array_equal(pf.region(0, (10, 20, 300, 500)).pixels, full[20:500, 10:300])
    got = pf.level(2)
    _close(got.pixels, warp(full, got.matrix, got.pixels.shape), mean=0.03, p99=0.25, edge=2)


@needs_openjpeg
@needs_htj2k
def test_tiled_htj2k(tmp_path, film):
    import imagecodecs

    path = _write(tmp_path, film, "f", transfer_syntax="htj2k", bits_stored=16)
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    stream = bytes(imagecodecs.htj2k_encode(arr, reversible=True, tile=(256, 128)))
    assert parse_j2k_header(stream).tiles > 1
    ds.PixelData = encapsulate([stream])
    tiled = tmp_path / "tiled.dcm"
    ds.save_as(tiled, enforce_file_format=True)
    full = read_dicom(str(tiled)).pixels
    pf = _open(str(tiled), overview_height=200)
    assert np.array_equal(pf.region(0, (100, 200, 300, 700)).pixels, full[200:700, 100:300])
    # tiles are transformed separately: level 1 differs from the one-tile film's only
    # near the tile borders
    _close(pf.level(1).pixels, _open(path, overview_height=200).level(1).pixels, 0.005, 0.05)


# ---------------------------------------------------------------- JPEG
def test_baseline_jpeg_levels(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="jpeg", bits_stored=8)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    full = read_dicom(path).pixels  # pydicom's JPEG decoder (gdcm / Pillow)
    pf = _open(path, overview_height=200)
    assert pf is not None and pf.codec_name == "pillow-jpeg"
    assert pf.overview.level == 2
    _close(pf.region(0, (0, 0, 352, 954)).pixels, full, mean=0.003, p99=0.01)
    # DCT scaling at 1/2 and 1/4 is a block average up to rounding; 1/8 keeps only the
    # DC term of each block
    for level, p99 in ((1, 0.01), (2, 0.01), (3, 0.1)):
        got = pf.level(level)
        want = warp(full, got.matrix, got.pixels.shape)
        _close(got.pixels, want, mean=0.01, p99=p99, edge=3)
    A = crop_matrix((150, 350), 200, 64, False)
    _close(pf.warp(A, (64, 64)), warp(full, A, (64, 64)), mean=0.01, p99=0.1)


def test_jpeg_frame_header():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(buf, format="JPEG")
    assert pillow_jpeg.frame_info(buf.getvalue()) == (50, 30, 8, 1, 0xC0)
    with pytest.raises(CodecError):
        pillow_jpeg.frame_info(b"\x00\x01")


# ---------------------------------------------------------------- failures and fallbacks
@needs_openjpeg
def test_corrupt_j2k_raises_a_typed_error(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    ds = pydicom.dcmread(path)
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    for name, bad in (
        ("cut", stream[: len(stream) // 3]),  # truncated codestream, intact DICOM
        ("garbage", stream[:200] + bytes(len(stream) - 200)),  # packets zeroed
    ):
        ds.PixelData = encapsulate([bad])
        out = tmp_path / f"{name}.dcm"
        ds.save_as(out, enforce_file_format=True)
        with pytest.raises(DecodeError) as err:
            pf = _open(str(out), overview_height=200)
            pf.region(0, (0, 0, 352, 954))
        assert isinstance(err.value, InputError)
        assert str(err.value).startswith(f"{out}:")
        assert "\n" not in str(err.value)


@needs_openjpeg
def test_truncated_file_raises(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated|cannot"):
        _open(str(cut))


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpegls"])
def test_other_syntaxes_keep_the_full_path(tmp_path, film, syntax):
    path = _write(tmp_path, film, "f", transfer_syntax=syntax, bits_stored=12)
    assert _open(path) is None


@needs_openjpeg
def test_codestream_disagreeing_with_header_keeps_the_full_path(tmp_path, film):
    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11  # the stream has 16 bits of precision
    out = tmp_path / "mismatch.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert _open(str(out)) is None


@needs_openjpeg
def test_decoder_choice(tmp_path, film):
    from legalign.pipeline.read.codecs import nvimgcodec

    path = _write(tmp_path, film, "f", transfer_syntax="j2k", bits_stored=16)
    assert _open(path, decoder="cpu").codec_name == "openjpeg"
    if not nvimgcodec.is_available():
        assert _open(path, decoder="auto").codec_name == "openjpeg"
        with pytest.raises(InputError, match="nvImageCodec"):
            _open(path, decoder="gpu")
    with pytest.raises(ValueError, match="decoder"):
        _open(path, decoder="fast")


def test_centred_levels_give_the_full_paths_blocks():
    """A pixel-centred level whose samples are the means of their 2**k blocks (what DCT
    scaling approximates, what the GPU plugin computes) gives exactly the full path's
    blocks when they hold whole samples; the linear interpolant (right for a JPEG 2000
    DWT level) would blur them."""
    import cv2

    from legalign.models.crops import warp_plan
    from legalign.pipeline.read.progressive import block_means

    rng = np.random.default_rng(5)
    img = rng.random((400, 320)).astype(np.float32)
    for k in (1, 2):
        p = 1 << k
        level = img.reshape(400 // p, p, 320 // p, p).mean(axis=(1, 3))
        t = 0.5 / p - 0.5
        M = np.array([[1.0 / p, 0.0, t], [0.0, 1.0 / p, t]])
        A = crop_matrix((151.3, 207.8), 260.0, 32, False)  # blocks of 8
        plan = warp_plan(img.shape, A, (32, 32))
        assert plan is not None and plan.f == 8
        sub = img[plan.y0 : plan.y1, plan.x0 : plan.x1]
        want = cv2.resize(sub, (sub.shape[1] // 8, sub.shape[0] // 8), interpolation=cv2.INTER_AREA)
        assert np.allclose(block_means(level, M, plan, centred=True), want, atol=1e-5)
        assert np.abs(block_means(level, M, plan, centred=False) - want).max() > 1e-2
