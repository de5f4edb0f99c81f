"""Decode a frame the datastore returns, for comparison with the source pixels."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from store_scp.datastore.rules import EXPLICIT_VR_LITTLE_ENDIAN


def decode_stored_frame(src: Dataset, stored_ts: str, data: bytes) -> np.ndarray:
    """Decode one frame returned by GetImageFrame, using the source's pixel description."""
    rows, cols = int(src.Rows), int(src.Columns)
    samples = int(src.SamplesPerPixel)
    if stored_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        bits = int(src.BitsAllocated)
        dtype = np.dtype(f"<{'i' if src.PixelRepresentation else 'u'}{bits // 8}")
        arr = np.frombuffer(data, dtype=dtype)
        return arr.reshape((rows, cols, samples) if samples > 1 else (rows, cols))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(stored_ts)
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
    ):
        if keyword in src:
            setattr(ds, keyword, src[keyword].value)
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    return pixel_array(ds, raw=True)
