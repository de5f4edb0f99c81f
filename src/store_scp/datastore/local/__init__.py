"""The embedded datastore: a HealthImaging-compatible datastore on the local disk.

`LocalDatastore` implements the Datastore port (`store_scp.datastore.base`) and the image-set
side of AWS HealthImaging that the pipeline, the CLI and the tests read back. `datastore.api`
serves it over HealthImaging's own HTTP API, so that `boto3.client("medical-imaging")` (and the
`HealthImagingDatastore` adapter) work against it unchanged. Import jobs read their input from,
and write their outputs to, a local object store (`file://`) or an S3 bucket (`s3://`, at any
S3 endpoint).

What it copies from HealthImaging is documented in the AWS HealthImaging Developer Guide
(https://docs.aws.amazon.com/healthimaging/latest/devguide/); each module cites its pages:

- `jobs`: the jobs table (StartDICOMImportJob, GetDICOMImportJob, ListDICOMImportJobs), the
  start throttle and the runner that claims jobs across threads and processes;
- `importer`: one import job: input listing, job quotas, the output files;
- `ingest`: one input file: the rejections an import makes, each with its failure line;
- `frames`: frames as stored (HTJ2K lossless when an encoder is installed, else the original
  encoding) and GetImageFrame's content types;
- `durable`: a job's new frame files made durable together, before anything references them;
- `metadata`: image set metadata in HealthImaging's JSON shape, element limits, DICOMTags;
- `image_sets`: primary and non-primary image sets, versions, and reading them back;
- `search`: SearchImageSets;
- `object_stores`: input and output locations by URI;
- `faults`: the test hooks that inject HealthImaging's failures;
- `database`, `errors`, `api_values`: the SQLite file, the model's errors, timestamps and
  pagination tokens.

Storage under `root`: `datastore.sqlite3` (WAL; jobs, image sets, every version's gzip
metadata, the frame index), `frames/` (one file per stored frame), `runners/` (one locked file
per process that runs jobs), `s3-staging/` (job outputs on their way to S3).
"""

from store_scp.datastore.rules import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K_LOSSLESS_RPCL,
    SUPPORTED_TRANSFER_SYNTAXES,
    import_rejection,
)

from .datastore import DEFAULT_DATASTORE_ID, LocalDatastore
from .frames import KEPT_AS_RECEIVED_TRANSFER_SYNTAXES, content_type_for, htj2k_encoder_available
from .metadata import ELEMENT_MAX_LENGTHS, ELEMENT_MAX_VALUES

__all__ = [
    "DEFAULT_DATASTORE_ID",
    "ELEMENT_MAX_LENGTHS",
    "ELEMENT_MAX_VALUES",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "HTJ2K_LOSSLESS_RPCL",
    "KEPT_AS_RECEIVED_TRANSFER_SYNTAXES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "LocalDatastore",
    "content_type_for",
    "htj2k_encoder_available",
    "import_rejection",
]
