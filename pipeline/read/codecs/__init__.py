"""Progressive codec plugins: decode a DICOM frame at a reduced resolution and/or a region.

Each plugin module, in the style of pydicom's decoder plugins, has ``NAME``,
``is_available()`` and a decode function; ``pipeline.read.progressive`` picks one per
transfer syntax (see its ``PLUGINS``).  Plugins here:

- ``openjpeg``: JPEG 2000 and HTJ2K, reduced level and region (the OpenJPEG library
  Pillow's wheel carries, through ctypes);
- ``pillow_j2k``: JPEG 2000 and HTJ2K, reduced level only (Pillow's own decoder), the
  fallback when ``openjpeg`` cannot load its library;
- ``pillow_jpeg``: baseline and 8-bit extended JPEG, DCT-scaled decoding at 1/2, 1/4, 1/8;
- ``nvimgcodec``: JPEG 2000 / HTJ2K on a CUDA GPU (optional, never a default dependency).
"""
