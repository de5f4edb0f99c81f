"""End to end with the variety a hospital sends: several modalities, compressed transfer
syntaxes with real encoded pixels sent as they are by DCMTK dcmsend, and a multi-frame object
sent by storescu. Every instance ends IMPORTED, listed under its study and series in its image
set's metadata, and every frame read back decodes to the pixels that were sent."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from tests.e2e.test_pipeline_embedded import server, wait_imported  # noqa: F401 (fixture)
from tests.healthimaging_client import local_client
from tests.serverproc import DCMTK, ServerProcess, storescu

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
DCMSEND = [str(DCMTK / "dcmsend"), "-aec", "STORE_SCP", "127.0.0.1"]


def image(
    sop_class: str, modality: str, study: str, series: str, frames: int, seed: int
) -> Dataset:
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "P-MIX", "Test^Mixed", modality
    ds.InstanceNumber = seed
    ds.Rows, ds.Columns = 64, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelRepresentation = 0
    shape = (frames, 64, 64) if frames > 1 else (64, 64)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 4000, shape, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def frames_of(ds: Dataset) -> list[np.ndarray]:
    pixels = ds.pixel_array
    return list(pixels) if int(getattr(ds, "NumberOfFrames", 1)) > 1 else [pixels]


def decode(data: bytes, content_type: str, ds: Dataset) -> np.ndarray:
    if "jph" in content_type or "j2c" in content_type or "jp2" in content_type:
        from openjpeg import decode as j2k_decode

        return np.asarray(j2k_decode(data)).reshape(ds.Rows, ds.Columns)
    return np.frombuffer(data, dtype="<u2").reshape(ds.Rows, ds.Columns)


def test_modalities_compressed_syntaxes_and_multiframe_end_imported(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    study = generate_uid()
    ct_series, mr_series, sc_series = generate_uid(), generate_uid(), generate_uid()
    compressed = tmp_path / "compressed"
    plain = tmp_path / "plain"
    compressed.mkdir()
    plain.mkdir()
    sent: dict[str, Dataset] = {}
    for n, (sop, modality, series, syntax) in enumerate(
        [
            (CT, "CT", ct_series, RLELossless),
            (CT, "CT", ct_series, RLELossless),
            (MR, "MR", mr_series, JPEG2000Lossless),
            (MR, "MR", mr_series, JPEG2000Lossless),
        ]
    ):
        ds = image(sop, modality, study, series, 1, n + 1)
        ds.compress(syntax)
        ds.save_as(compressed / f"{n}.dcm", enforce_file_format=True)
        sent[ds.SOPInstanceUID] = pydicom.dcmread(compressed / f"{n}.dcm")
    multi = image(MULTIFRAME_WORD_SC, "OT", study, sc_series, 3, 9)
    multi.save_as(plain / "multi.dcm", enforce_file_format=True)
    sent[multi.SOPInstanceUID] = pydicom.dcmread(plain / "multi.dcm")

    port = str(server.port)
    # dcmsend proposes each file's own transfer syntax, so the compressed bytes go as they are.
    subprocess.run(
        [*DCMSEND, port, "--scan-directories", str(compressed)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    storescu(server.port, [plain / "multi.dcm"])
    items = wait_imported(server, study, len(sent))
    assert {i["state"] for i in items} == {"IMPORTED"}, items
    stored_syntaxes = {
        pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
        for p in server.stored_files()
    }
    assert {RLELossless, JPEG2000Lossless} <= stored_syntaxes  # stored as sent

    client = local_client(f"http://127.0.0.1:{server.ports['datastore_api']}")
    datastore_id = client.list_datastores()["datastoreSummaries"][0]["datastoreId"]
    seen: set[str] = set()
    for image_set_id in {i["image_set_id"] for i in items}:
        blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
        meta = json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
        assert meta["Study"]["DICOM"]["StudyInstanceUID"] == study
        for series_uid, series in meta["Study"]["Series"].items():
            for sop_uid, inst in series["Instances"].items():
                ds = sent[sop_uid]
                assert series_uid == ds.SeriesInstanceUID
                expected = frames_of(ds)
                assert len(inst["ImageFrames"]) == len(expected)
                for frame, pixels in zip(inst["ImageFrames"], expected, strict=True):
                    got = client.get_image_frame(
                        datastoreId=datastore_id,
                        imageSetId=image_set_id,
                        imageFrameInformation={"imageFrameId": frame["ID"]},
                    )
                    data = got["imageFrameBlob"].read()
                    assert np.array_equal(decode(data, got["contentType"], ds), pixels)
                seen.add(sop_uid)
    assert seen == set(sent)
