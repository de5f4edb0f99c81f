"""Test objects made on the spot: nothing is downloaded."""

from __future__ import annotations

import random

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def secondary_capture(rng: random.Random, size: int) -> Dataset:
    """A Secondary Capture object with about `size` bytes of random 8-bit pixels, each UID
    new, in Explicit VR Little Endian."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Columns = 256
    ds.Rows = max(size // 256, 1)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rng.randbytes(ds.Rows * ds.Columns)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
