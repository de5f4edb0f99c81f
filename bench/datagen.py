"""Synthetic benchmark data: CT- and MR-like DICOM Part 10 files written with pydicom.

Every file is Explicit VR Little Endian and carries a fresh SOP Instance UID. Each data set is
built once into a cache folder (one sub-folder per data set, a `<name>.manifest.json` beside
it, never inside: senders scan the whole folder); later runs reuse it.
The pixel data is pseudo-random (not compressible), cut from one random block per data set at
a different offset for every file, so no two files are byte-identical.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

#: Bump when the generated files change, so stale caches are rebuilt.
GENERATOR_VERSION = 1

#: The bench's own Implementation Class UID (a UUID-derived 2.25 UID), written in file metas.
BENCH_IMPLEMENTATION_UID = UID("2.25.122225172495295819787651693593792610512")
BENCH_IMPLEMENTATION_VERSION = "STORESCP_BENCH"

_INSTANCES_PER_SERIES = 100
#: Series size in the studies of `ensure_studies`: two image sets per 100-instance study.
STUDY_SERIES_SIZE = 50


@dataclass(frozen=True)
class DataSpec:
    """What to generate: `count` files of one kind, split over `parts` sub-folders."""

    name: str
    kind: str  # "ct" (single frame CT) or "mr" (multi-frame enhanced MR)
    count: int
    rows: int
    columns: int
    frames: int = 1
    parts: int = 1  # >1: files go to part-00 .. part-NN (one folder per parallel sender)

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.frames * 2


@dataclass(frozen=True)
class DataSet:
    """A generated data set on disk."""

    spec: DataSpec
    root: Path
    files: int
    total_bytes: int

    def part_dirs(self) -> list[Path]:
        if self.spec.parts <= 1:
            return [self.root]
        return [self.root / f"part-{i:02d}" for i in range(self.spec.parts)]

    @property
    def mean_file_bytes(self) -> float:
        return self.total_bytes / self.files if self.files else 0.0


def _base_dataset(spec: DataSpec, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = BENCH_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = BENCH_IMPLEMENTATION_VERSION
    sop_class = CTImageStorage if spec.kind == "ct" else EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.AccessionNumber = "BENCH0001"
    ds.Modality = "CT" if spec.kind == "ct" else "MR"
    ds.Manufacturer = "store-scp bench"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Bench^Synthetic"
    ds.PatientID = "BENCH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = "1"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    if spec.kind == "ct":
        ds.KVP = "120"
        ds.SliceThickness = "1.0"
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    else:
        ds.NumberOfFrames = spec.frames
        ds.MagneticFieldStrength = "3"
        ds.ContentQualification = "PRODUCT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _manifest_path(root: Path) -> Path:
    # Beside the folder, not in it: senders scan the whole folder and must find only DICOM files.
    return root.with_name(root.name + ".manifest.json")


def _manifest_ok(root: Path, spec: DataSpec, layout: str = "mixed") -> dict[str, Any] | None:
    if not root.is_dir():
        return None
    try:
        manifest = json.loads(_manifest_path(root).read_text())
    except (OSError, ValueError):
        return None
    wanted: dict[str, Any] = {"version": GENERATOR_VERSION, "spec": spec.__dict__}
    if layout != "mixed":  # manifests of the original layout carry no "layout" key
        wanted["layout"] = layout
    if {k: manifest.get(k) for k in wanted} != wanted:
        return None
    return dict(manifest)


def ensure_dataset(cache_dir: Path, spec: DataSpec, log: bool = True) -> DataSet:
    """Return the data set for `spec`, generating it under `cache_dir` if not cached yet.

    One study; a new series every 100 files; with `spec.parts` > 1 the files are dealt
    round-robin into the part folders."""
    return _ensure(cache_dir, spec, "mixed", log)


def ensure_studies(cache_dir: Path, spec: DataSpec, log: bool = True) -> DataSet:
    """Like `ensure_dataset`, but `spec.parts` studies of `spec.count / spec.parts` files, one
    study per part folder (one association per study, as modalities send), each study its
    own patient, a new series every `STUDY_SERIES_SIZE` files. `study_uids(data)` lists them."""
    if spec.parts < 1 or spec.count % spec.parts:
        raise ValueError(f"{spec.count} files do not split into {spec.parts} equal studies")
    return _ensure(cache_dir, spec, "studies", log)


def study_uids(data: DataSet) -> dict[str, str]:
    """Part folder name -> Study Instance UID, for a data set made by `ensure_studies`."""
    manifest = json.loads(_manifest_path(data.root).read_text())
    return dict(manifest["studies"])


def _ensure(cache_dir: Path, spec: DataSpec, layout: str, log: bool) -> DataSet:
    root = cache_dir / spec.name
    cached = _manifest_ok(root, spec, layout)
    if cached is not None:
        return DataSet(spec, root, int(cached["files"]), int(cached["total_bytes"]))
    if log:
        print(f"generating {spec.name}: {spec.count} files ...", file=sys.stderr, flush=True)
    tmp = cache_dir / f".{spec.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    _manifest_path(root).unlink(missing_ok=True)
    tmp.mkdir(parents=True)

    rng = random.Random(spec.name)
    block = rng.randbytes(1 << 20)
    # A pixel buffer longer than needed, so every file takes a different window of it.
    reps = spec.pixel_bytes // len(block) + 2
    pool = block * reps

    studies = layout == "studies"
    per_study = spec.count // spec.parts if studies else spec.count
    series_size = STUDY_SERIES_SIZE if studies else _INSTANCES_PER_SERIES
    study_of_part: dict[str, str] = {}
    ds = _base_dataset(spec, generate_uid())
    total = 0
    for i in range(spec.count):
        j = i % per_study  # index within its study
        if studies and j == 0:
            part = i // per_study
            ds.StudyInstanceUID = generate_uid()
            ds.FrameOfReferenceUID = generate_uid()
            ds.StudyID = str(part + 1)
            ds.AccessionNumber = f"BENCH{part + 1:05d}"
            ds.PatientID = f"BENCH-{part + 1:04d}"
            study_of_part[f"part-{part:02d}"] = ds.StudyInstanceUID
        if j % series_size == 0:
            ds.SeriesInstanceUID = generate_uid()
            ds.SeriesNumber = j // series_size + 1
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = j % series_size + 1
        offset = rng.randrange(0, len(block)) & ~1
        ds.PixelData = pool[offset : offset + spec.pixel_bytes]
        ds["PixelData"].VR = "OW"
        if spec.parts <= 1:
            folder = tmp
        else:
            part = i // per_study if studies else i % spec.parts
            folder = tmp / f"part-{part:02d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"{spec.kind.upper()}{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size

    manifest: dict[str, Any] = {
        "version": GENERATOR_VERSION,
        "spec": spec.__dict__,
        "files": spec.count,
        "total_bytes": total,
    }
    if studies:
        manifest["layout"] = layout
        manifest["studies"] = study_of_part
    os.replace(tmp, root)
    _manifest_path(root).write_text(json.dumps(manifest, indent=2))
    return DataSet(spec, root, spec.count, total)


def standard_specs(quick: bool) -> dict[str, DataSpec]:
    """The bench's data sets, keyed by use: small, medium, large, nagle."""
    scale = 10 if quick else 1
    suffix = "-quick" if quick else ""
    return {
        # 88 x 88 x 16 bit = 15,488 pixel bytes + header: a 16 KB CT slice.
        "small": DataSpec(f"ct16k-{5000 // scale}{suffix}", "ct", 5000 // scale, 88, 88),
        # 512 x 512 x 16 bit: a 0.5 MB CT slice; 16 folders, one per parallel sender.
        "medium": DataSpec(
            f"ct512k-{2000 // scale}{suffix}", "ct", 2000 // scale, 512, 512, parts=16
        ),
        # 96 frames of 512 x 512 x 16 bit = 50.3 MB enhanced MR.
        "large": DataSpec(f"mr50m-{20 // scale}{suffix}", "mr", 20 // scale, 512, 512, frames=96),
        # The Nagle-on row: 200 16 KB objects.
        "nagle": DataSpec(f"ct16k-{200 // scale}{suffix}-nagle", "ct", 200 // scale, 88, 88),
    }
