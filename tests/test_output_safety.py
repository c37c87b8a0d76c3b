"""Unit tests of the output-safety helpers: text (safe_text), rounding (precision), the
header the SR / SC copy from (dicom_header), the spacing plausibility bounds, the walk's
handling of unlistable folders and output markers, and native decoder messages."""

from __future__ import annotations

import os

import pytest

from legalign.pipeline.outputs.precision import round_value, rounded
from legalign.pipeline.safe_text import ascii_text, csv_cell, printable


def test_printable_escapes_controls_and_undecodable_bytes():
    name = os.fsdecode(b"/a/film_\xff\n\x1b[31m.dcm")
    out = printable(name)
    assert out == "/a/film_\\xff\\n\\x1b[31m.dcm"
    out.encode("utf-8")  # valid Unicode
    assert printable("ü 片") == "ü 片"
    assert ascii_text("ü") == "\\xfc"


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cell_neutralises_formulas(value):
    cell = csv_cell(value)
    assert cell.startswith("'") and "\t" not in cell and "\r" not in cell


def test_csv_cell_leaves_plain_text():
    assert csv_cell("/archive/film.dcm") == "/archive/film.dcm"


def test_rounding_by_key():
    assert round_value(0.16799999999999998, "hka_deg") == 0.17
    assert round_value(0.123456789, "spacing_mm") == 0.123457
    assert round_value(0.98765, "femoral_head_conf") == 0.988
    assert round_value(float("nan"), "x") is None
    assert round_value(-0.001, "hka_deg") == 0.0
    d = rounded(
        {
            "legs": [{"landmarks": {"knee": {"x": 1.23456, "confidence": 0.123456}}}],
            "timings_s": {"read": 0.123456},
        }
    )
    assert d["legs"][0]["landmarks"]["knee"] == {"x": 1.23, "confidence": 0.123}
    assert d["timings_s"]["read"] == 0.1235


def _header(**kw):
    from legalign.training.synth.dicom_archive import DicomOptions, build_dataset
    from legalign.training.synth.film import generate_film

    ds = build_dataset(generate_film(1, size="small"), DicomOptions(), index=1, seed=1)
    del ds.PixelData
    for k, v in kw.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def test_derivable_header_fills_type2_and_drops_invalid_values():
    from legalign.pipeline.outputs.dicom_header import TYPE2_COPIED, derivable_header

    src = _header(
        PatientBirthDate=None, PatientSex=None, PatientID="P" * 5000, InstitutionName="bad\x00name"
    )
    ds, warnings = derivable_header(src)
    for k in TYPE2_COPIED:
        assert k in ds
    assert ds.PatientBirthDate == "" and ds.PatientID == ""
    assert "InstitutionName" not in ds  # Type 3: dropped, not emptied
    assert any(w.startswith("PatientID:") for w in warnings)
    assert any(w.startswith("InstitutionName:") for w in warnings)
    assert all("P" * 65 not in w for w in warnings)  # values are never logged
    assert src.PatientID == "P" * 5000  # the source is not modified


def test_derivable_header_refuses_invalid_identity_uids():
    from legalign.pipeline.outputs.dicom_header import InvalidSourceIdentity, derivable_header

    for uid in ('=HYPERLINK("x")', "1.2." + "3" * 200):
        with pytest.raises(InvalidSourceIdentity, match="StudyInstanceUID"):
            derivable_header(_header(StudyInstanceUID=uid))
    with pytest.raises(InvalidSourceIdentity, match="SOPInstanceUID"):
        derivable_header(_header(SOPInstanceUID=None))


def test_spacing_bounds_come_from_the_config(tmp_path):
    from legalign.pipeline.errors import InputError
    from legalign.pipeline.read.limits import Bounds, InputLimits, default_input_limits
    from legalign.pipeline.read.spacing import resolve_spacing

    limits = default_input_limits()
    assert 0 < limits.spacing_mm.min < 0.1 < 1.0 < limits.spacing_mm.max
    assert limits.magnification.min <= 1.0 < 2.0 <= limits.magnification.max
    ds = _header()
    ds.EstimatedRadiographicMagnificationFactor = "1.1"
    assert resolve_spacing(ds, "f")[0] == pytest.approx(ds.ImagerPixelSpacing[0] / 1.1)
    tight = InputLimits(spacing_mm=Bounds(0.01, 5.0), magnification=Bounds(1.2, 2.0))
    with pytest.raises(InputError, match="implausible Estimated") as exc:
        resolve_spacing(ds, "f", limits=tight)
    assert exc.value.reason == "no_spacing"


def test_input_limits_config_errors_name_the_key(tmp_path):
    from legalign.pipeline.config_schema import ConfigError, load_config
    from legalign.pipeline.read.limits import InputLimits

    bad = tmp_path / "l.yaml"
    bad.write_text("spacing_mm: {min: 2.0, max: 1.0}\n")
    with pytest.raises(ConfigError, match="spacing_mm"):
        load_config(InputLimits, "input_limits.yaml", bad)


def test_walk_yields_unlistable_folders_and_skips_output_folders(tmp_path, monkeypatch):
    from legalign.pipeline.engine import inputs

    (tmp_path / "a" / "locked").mkdir(parents=True)
    (tmp_path / "a" / "x.dcm").write_bytes(b"x")
    (tmp_path / "a" / "locked" / "y.dcm").write_bytes(b"x")
    (tmp_path / "a" / "res").mkdir()
    (tmp_path / "a" / "res" / inputs.OUTPUT_MARKER).write_text("")
    (tmp_path / "a" / "res" / "z_sr.dcm").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got = list(inputs.expand_inputs([str(tmp_path / "a")]))
    assert str(tmp_path / "a" / "x.dcm") in got
    assert str(tmp_path / "a" / "locked") in got  # a row, not silence
    assert not any("z_sr" in p for p in got)


def test_unlistable_folder_is_an_unreadable_input(tmp_path, monkeypatch):
    from legalign.pipeline.errors import InputError
    from legalign.pipeline.read import check_regular_file

    (tmp_path / "locked").mkdir()

    def listdir(path="."):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(InputError, match="cannot be listed") as exc:
        check_regular_file(str(tmp_path / "locked"))
    assert exc.value.reason == "unreadable"


def test_native_stderr_captures_c_level_writes_only():
    import sys

    from legalign.pipeline.read.native_stderr import native_stderr

    with native_stderr() as lines:
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes\n")
        print("python-level text", file=sys.stderr)
    assert lines == ["Corrupt JPEG data: 3 extraneous bytes"]
    with native_stderr() as lines:
        pass
    assert lines == []
