"""The one validated settings object of store-scp.

Every setting can come from four places. The first that gives a value wins:

1. explicit keyword arguments (``store-scp serve`` passes the command-line flags the user gave);
2. environment variables ``STORE_SCP_<SETTING>`` (the setting name in upper case; this is what
   ECS task definitions use). List settings accept a comma-separated string (``a,b,c``) or a
   JSON array (``["a", "b"]``); the mapping setting takes a JSON object. An empty variable
   counts as unset;
3. an optional TOML file whose top-level keys are the setting names. Its path comes from
   ``Settings.load(config_file=...)`` / ``load_settings(config_file=...)`` or from the
   environment variable ``STORE_SCP_CONFIG``. Relative paths inside it are relative to the
   working directory;
4. the defaults below.

Each wrong value is reported on its own line as ``STORE_SCP_<SETTING>: <message>`` by
:func:`load_settings`, which raises :class:`ConfigError`. :func:`describe` renders the same list
as a Markdown table from the code, so the documentation cannot drift.

Environment variables, by group:

DICOM listeners
    ``STORE_SCP_AE_TITLE`` (our AE title, 1-16 characters of the AE value representation),
    ``STORE_SCP_BIND`` (IP address to listen on, ``::`` allowed),
    ``STORE_SCP_PORT`` (plain DICOM port; 0 = chosen by the OS),
    ``STORE_SCP_PLAIN_ENABLED`` (serve the plain port at all).

TLS (enabled when ``STORE_SCP_TLS_CERT`` is set)
    ``STORE_SCP_TLS_PORT``, ``STORE_SCP_TLS_CERT`` and ``STORE_SCP_TLS_KEY`` (PEM files, both or
    neither), ``STORE_SCP_TLS_CA`` (CA bundle; set = mutual TLS, client certificate required),
    ``STORE_SCP_TLS_PROFILE`` (``bcp195`` or ``non-downgrading``),
    ``STORE_SCP_TLS_CERT_AE_MAP`` (JSON object: client certificate subject CN -> calling AE
    titles it may use; needs mutual TLS), ``STORE_SCP_TLS_HANDSHAKE_TIMEOUT`` (seconds).

Probe HTTP server (``/healthz``, ``/readyz``, ``/metrics``)
    ``STORE_SCP_HTTP_BIND``, ``STORE_SCP_HTTP_PORT`` (0 = chosen by the OS, -1 = disabled).

Storage and durability
    ``STORE_SCP_DATA_DIR`` (where the embedded default keeps everything),
    ``STORE_SCP_FSYNC`` (``false`` is UNSAFE: objects may be acknowledged that a power loss
    destroys; for benchmarks only), ``STORE_SCP_OBJECT_STORE`` (``local`` or ``s3``),
    ``STORE_SCP_S3_BUCKET``, ``STORE_SCP_S3_PREFIX``, ``STORE_SCP_S3_ENDPOINT_URL``,
    ``STORE_SCP_S3_REGION``, ``STORE_SCP_S3_KMS_KEY_ID``, ``STORE_SCP_TRACKER`` (``sqlite`` or
    ``dynamodb``), ``STORE_SCP_DYNAMODB_TABLE_PREFIX``, ``STORE_SCP_DYNAMODB_ENDPOINT_URL``,
    ``STORE_SCP_DYNAMODB_REGION``.

Access control and limits
    ``STORE_SCP_REQUIRE_CALLED_AE``, ``STORE_SCP_ALLOWED_CALLING_AES`` (empty = any),
    ``STORE_SCP_ALLOWED_NETWORKS`` (CIDR allow-list; ``any`` = every address),
    ``STORE_SCP_MAX_ASSOCIATIONS``, ``STORE_SCP_MAX_ASSOCIATIONS_PER_AE``,
    ``STORE_SCP_MAX_PDU_LENGTH`` (4096-16777216; 0 = unlimited is not allowed),
    ``STORE_SCP_MAX_OBJECT_SIZE`` (bytes), ``STORE_SCP_PRIVATE_SOP_CLASSES`` (extra SOP Class
    UIDs accepted besides the standard storage classes), ``STORE_SCP_PROCESSES`` (worker
    processes sharing the ports with SO_REUSEPORT).

Timeouts (seconds, all > 0)
    ``STORE_SCP_ARTIM_TIMEOUT``, ``STORE_SCP_ACSE_TIMEOUT``, ``STORE_SCP_DIMSE_TIMEOUT``,
    ``STORE_SCP_IDLE_TIMEOUT``, ``STORE_SCP_MAX_ASSOCIATION_LIFETIME``,
    ``STORE_SCP_SHUTDOWN_GRACE``.

Import pipeline
    ``STORE_SCP_PIPELINE`` (``embedded`` or ``off``), ``STORE_SCP_DATASTORE`` (``local`` or
    ``healthimaging``; AWS HealthImaging needs ``STORE_SCP_OBJECT_STORE=s3``),
    ``STORE_SCP_HEALTHIMAGING_DATASTORE_ID``, ``STORE_SCP_HEALTHIMAGING_ENDPOINT_URL``,
    ``STORE_SCP_HEALTHIMAGING_REGION``, ``STORE_SCP_IMPORT_ROLE_ARN``,
    ``STORE_SCP_IMPORT_OUTPUT_URI`` (``s3://bucket/prefix/`` for the job outputs),
    ``STORE_SCP_DATASTORE_API_BIND``, ``STORE_SCP_DATASTORE_API_PORT`` (the embedded
    datastore's HealthImaging API, loopback by default; -1 = disabled),
    ``STORE_SCP_DATASTORE_JOB_THREADS`` (threads running its import jobs; 0 = from the cores),
    ``STORE_SCP_SEAL_QUIET_SECONDS``, ``STORE_SCP_SEAL_MAX_AGE_SECONDS``,
    ``STORE_SCP_BATCH_LEASE_SECONDS``,
    ``STORE_SCP_IMPORT_START_RATE``, ``STORE_SCP_MAX_CONCURRENT_IMPORT_JOBS``,
    ``STORE_SCP_MAX_FILES_PER_JOB``, ``STORE_SCP_MAX_FOLDERS_PER_JOB``,
    ``STORE_SCP_KEEP_IMPORTED_DAYS`` (days an imported object is kept before it is deleted;
    0 = at once, ``forever`` = never; failed objects always go to quarantine),
    ``STORE_SCP_CLEANUP_LEASE_SECONDS``.

Logging
    ``STORE_SCP_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``),
    ``STORE_SCP_LOG_PHI`` (``true`` lets patient names, IDs and birth dates reach the logs).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ConfigError",
    "IPNetwork",
    "Settings",
    "describe",
    "env_var",
    "load_settings",
]

ENV_PREFIX = "STORE_SCP_"
CONFIG_ENV = "STORE_SCP_CONFIG"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
_ANY_NETWORKS: tuple[str, ...] = ("0.0.0.0/0", "::/0")

_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
# AE value representation: default character repertoire without backslash and control chars.
_AE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def env_var(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return ENV_PREFIX + field_name.upper()


class ConfigError(ValueError):
    """The configuration is invalid; ``str()`` holds one ``STORE_SCP_FIELD: message`` a line
    (``field in FILE: message`` for a value from the TOML file)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{var}: {message}" for var, message in problems))


# --------------------------------------------------------------------------------------------
# value parsing helpers (shared by the validators)


def _check_ae(value: Any, what: str = "AE title") -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError(f"{what} must not be empty or all spaces")
    if len(stripped) > 16:
        raise ValueError(f"{what} {stripped!r} is longer than 16 characters")
    if not _AE_RE.fullmatch(stripped):
        raise ValueError(
            f"{what} {stripped!r} may hold only printable ASCII characters, no backslash"
        )
    return stripped


def _split_list(value: Any) -> Any:
    """A comma-separated string or a JSON array -> list; anything else is left to pydantic."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON array: {exc.msg}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return value


def _empty_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


# --------------------------------------------------------------------------------------------
# the TOML source

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("store_scp_config_file", default=None)


@contextmanager
def _config_file(path: Path | None) -> Iterator[None]:
    token = _CONFIG_FILE.set(path)
    try:
        yield
    finally:
        _CONFIG_FILE.reset(token)


def _config_path() -> Path | None:
    explicit = _CONFIG_FILE.get()
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(from_env) if from_env else None


class _TomlSource(PydanticBaseSettingsSource):
    """Top-level keys of a TOML file; a missing or unreadable file is a ConfigError."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            with path.open("rb") as fh:
                self._data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                [(CONFIG_ENV, f"configuration file {str(path)!r} not found")]
            ) from None
        except OSError as exc:
            raise ConfigError(
                [(CONFIG_ENV, f"cannot read configuration file {str(path)!r}: {exc.strerror}")]
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [(CONFIG_ENV, f"configuration file {str(path)!r} is not valid TOML: {exc}")]
            ) from None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# --------------------------------------------------------------------------------------------
# the settings


class Settings(BaseSettings):
    """All settings of store-scp; see the module documentation for the sources and variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        env_ignore_empty=True,
        extra="forbid",
    )

    # DICOM listeners
    ae_title: str = Field(
        default="STORE_SCP",
        description="Our AE title (1-16 characters, no backslash or control characters; "
        "leading and trailing spaces are removed).",
    )
    bind: str = Field(
        default="0.0.0.0",
        description="IP address the DICOM ports listen on (`::` for all IPv6/IPv4).",
    )
    port: int = Field(
        default=11112,
        ge=0,
        le=65535,
        description="Plain DICOM port (0 = chosen by the OS, for tests).",
    )
    plain_enabled: bool = Field(default=True, description="Serve the plain (non-TLS) DICOM port.")

    # TLS
    tls_port: int = Field(default=2762, ge=0, le=65535, description="DICOM-TLS port.")
    tls_cert: Path | None = Field(
        default=None,
        validate_default=True,
        description="Server certificate chain (PEM). Setting it enables TLS.",
    )
    tls_key: Path | None = Field(
        default=None,
        validate_default=True,
        description="Private key of the server certificate (PEM); required with tls_cert.",
    )
    tls_ca: Path | None = Field(
        default=None,
        validate_default=True,
        description="CA bundle (PEM) for client certificates. Set = mutual TLS: a client "
        "certificate is required and verified.",
    )
    tls_profile: Literal["bcp195", "non-downgrading"] = Field(
        default="bcp195",
        description="PS3.15 TLS profile: `bcp195` (TLS 1.2+) or `non-downgrading` "
        "(BCP 195 non-downgrading: TLS 1.2+ with forward-secret AEAD suites only).",
    )
    tls_cert_ae_map: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        validate_default=True,
        description="Client certificate subject CN -> calling AE titles it may use (JSON "
        "object; needs mutual TLS). Empty = no restriction.",
    )
    tls_handshake_timeout: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="Seconds allowed for a TLS handshake."
    )

    # probe HTTP server
    http_bind: str = Field(
        default="0.0.0.0",
        description="IP address of the probe HTTP server (/healthz, /readyz, /metrics).",
    )
    http_port: int = Field(
        default=8080,
        ge=-1,
        le=65535,
        description="Probe HTTP port (0 = chosen by the OS, -1 = disabled).",
    )

    # storage
    data_dir: Path = Field(
        default=Path("store-scp-data"),
        description="Folder where the embedded default keeps objects, tracker and datastore.",
    )

    # access control and limits
    require_called_ae: bool = Field(
        default=True, description="Reject associations whose called AE title is not ours."
    )
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate (comma-separated). Empty = any.",
    )
    allowed_networks: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in DEFAULT_ALLOWED_NETWORKS],
        description="Peer CIDR allow-list, IPv4 and IPv6 (comma-separated); a peer outside it "
        "is closed at accept. `any` allows every address.",
    )
    max_associations: int = Field(
        default=64, ge=1, description="Maximum simultaneous associations."
    )
    max_associations_per_ae: int = Field(
        default=16, ge=1, description="Maximum simultaneous associations per calling AE title."
    )
    max_pdu_length: int = Field(
        default=1048576,
        ge=4096,
        le=16777216,
        description="Maximum PDU length we announce and accept (4096-16777216 bytes).",
    )
    max_object_size: int = Field(
        default=4 * 1024**3,
        gt=0,
        description="Largest dataset accepted, in bytes (larger: 0xA700).",
    )

    # timeouts
    artim_timeout: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="ARTIM timer, seconds (PS3.8)."
    )
    acse_timeout: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="Association negotiation timeout, seconds.",
    )
    dimse_timeout: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="Timeout waiting inside a DIMSE message.",
    )
    idle_timeout: float = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds an association may stay idle between messages.",
    )
    max_association_lifetime: float = Field(
        default=14400.0, gt=0, allow_inf_nan=False, description="Longest association, seconds."
    )
    shutdown_grace: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="On SIGTERM, seconds in-flight associations get to finish before an abort.",
    )

    # durability and processes
    fsync: bool = Field(
        default=True,
        description="fsync every object and its folder before answering success. `false` is "
        "UNSAFE (a power loss can destroy acknowledged objects): benchmarks only.",
    )
    processes: int = Field(
        default=1, ge=1, le=64, description="Worker processes sharing the ports with SO_REUSEPORT."
    )
    private_sop_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Private SOP Class UIDs accepted besides the standard storage SOP classes.",
    )

    # object store and tracker
    object_store: Literal["local", "s3"] = Field(
        default="local", description="Where objects are committed: `local` (data_dir) or `s3`."
    )
    s3_bucket: str | None = Field(
        default=None, validate_default=True, description="S3 landing bucket (required for `s3`)."
    )
    s3_prefix: str = Field(
        default="",
        description="Key prefix in the bucket (stored without leading/trailing slashes).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint URL (S3-compatible stores, tests); default: AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region; default: the AWS SDK's.")
    s3_kms_key_id: str | None = Field(
        default=None, description="KMS key for SSE-KMS; default: the bucket's default encryption."
    )
    tracker: Literal["sqlite", "dynamodb"] = Field(
        default="sqlite",
        description="Where receipts, batches and jobs are tracked: `sqlite` "
        "(data_dir/tracker.sqlite3) or `dynamodb` (six tables, see dynamodb_table_prefix).",
    )
    dynamodb_table_prefix: str = Field(
        default="store-scp",
        description="The DynamoDB tracker's tables are `<prefix>-receipts`, `-attempts`, "
        "`-instances`, `-batches`, `-jobs` and `-counters`; `store-scp create-tables` creates "
        "them (an AWS deployment's CDK app does).",
    )
    dynamodb_endpoint_url: str | None = Field(
        default=None, description="DynamoDB endpoint URL (tests, local DynamoDB); default: AWS."
    )
    dynamodb_region: str | None = Field(
        default=None, description="DynamoDB region; default: the AWS SDK's."
    )

    # import pipeline
    pipeline: Literal["embedded", "off"] = Field(
        default="embedded",
        description="`embedded`: `serve` also runs the import worker; `off`: receive only "
        "(run `store-scp worker` elsewhere).",
    )
    datastore: Literal["local", "healthimaging"] = Field(
        default="local",
        description="Where batches are imported: `local` (the embedded HealthImaging-compatible "
        "datastore under data_dir/datastore) or `healthimaging` (AWS HealthImaging through "
        "boto3, or any endpoint speaking its API).",
    )
    healthimaging_datastore_id: str | None = Field(
        default=None,
        validate_default=True,
        description="HealthImaging datastore id, 32 characters of [0-9a-z] (required for "
        "`healthimaging`).",
    )
    healthimaging_endpoint_url: str | None = Field(
        default=None,
        description="HealthImaging endpoint override (empty: the AWS default); a "
        "HealthImaging-compatible endpoint may also import from the local object store.",
    )
    healthimaging_region: str | None = Field(default=None, description="AWS region.")
    import_role_arn: str = Field(
        default="",
        validate_default=True,
        description="IAM role HealthImaging assumes to read the input prefix, write the job "
        "outputs and use the KMS key (required for `healthimaging`).",
    )
    import_output_uri: str | None = Field(
        default=None,
        validate_default=True,
        description="Where import jobs write their outputs, `s3://bucket/prefix/` (object_store "
        "`s3` only); default: `import-output/` under the object store's root (the landing "
        "prefix), outside every batch.",
    )
    datastore_api_bind: str = Field(
        default="127.0.0.1",
        description="Address of the embedded datastore's HealthImaging API (it returns patient "
        "data: keep it on loopback unless access is controlled).",
    )
    datastore_api_port: int = Field(
        default=8090,
        ge=-1,
        le=65535,
        description="Port of the embedded datastore's HealthImaging API (0 = chosen by the OS, "
        "-1 = disabled).",
    )
    datastore_job_threads: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Threads that run the embedded datastore's import jobs (0 = half the cores, "
        "at least 2 and at most 4: a job mostly holds Python's interpreter lock, which it "
        "shares with the receiver of its process; more help when jobs wait on S3 input).",
    )
    seal_quiet_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seal a batch once no association writes into it and it was quiet this long.",
    )
    seal_max_age_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Seal a batch this long after its first object, whatever its traffic (under "
        "steady traffic the quiet rule may never hold; at most one job a minute per receiver).",
    )
    batch_lease_seconds: float = Field(
        default=60.0,
        ge=3,
        description="An open batch (a receiver's, or the one a `store-scp retry` fills) stays "
        "its owner's this long without a renewal (a receiver renews it every third of it); once "
        "it lapses (the owner died), any worker seals it.",
    )
    import_start_rate: float = Field(
        default=0.25, gt=0, description="StartDICOMImportJob calls per second, at most."
    )
    max_concurrent_import_jobs: int = Field(
        default=20, ge=1, description="Import jobs running at once, at most."
    )
    max_files_per_job: int = Field(
        default=5000,
        ge=1,
        description="Objects in one batch (one import job), at most: HealthImaging's "
        "files-per-job quota.",
    )
    max_folders_per_job: int = Field(
        default=10000,
        ge=2,
        description="Nested folders (one per study, one per series) in one batch, at most: "
        "HealthImaging imports at most 10,000 per job.",
    )
    keep_imported_days: float | None = Field(
        default=7.0,
        ge=0,
        description="Days an imported object stays in the object store before it is deleted "
        "(0 = as soon as it is imported; `forever` = never deleted). Failed objects are moved "
        "to `quarantine/` at once, with a JSON note that says why.",
    )
    cleanup_lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A worker's claim on one object's cleanup holds this long (longer than a "
        "cleanup takes); if the worker dies holding it, another worker finishes that cleanup "
        "once it lapses.",
    )

    # logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_phi: bool = Field(
        default=False, description="Let patient names, IDs and birth dates reach the logs."
    )

    # ---------------------------------------------------------------------------- sources

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, _config_path()))

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build the settings; raise :class:`ConfigError` listing every bad value.

        ``config_file`` takes precedence over ``STORE_SCP_CONFIG``. Overrides whose value is
        ``None`` are ignored (a command-line option the user did not give).
        """
        given = {name: value for name, value in overrides.items() if value is not None}
        path = Path(config_file) if config_file is not None else None
        problems = _unknown_variables()
        with _config_file(path):
            try:
                settings = cls(**given)
            except ValidationError as exc:
                problems += _problems(exc, given=given, toml=_config_path())
            except ConfigError as exc:  # the TOML file is missing or unreadable
                problems += exc.problems
        if problems:
            raise ConfigError(problems)
        return settings

    # ---------------------------------------------------------------------------- properties

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_cert is not None and self.tls_ca is not None

    @property
    def http_enabled(self) -> bool:
        return self.http_port >= 0

    # ---------------------------------------------------------------------------- validators

    @field_validator(
        "tls_cert", "tls_key", "tls_ca", "s3_bucket", "s3_endpoint_url", "s3_region",
        "s3_kms_key_id", "dynamodb_endpoint_url", "dynamodb_region",
        "healthimaging_datastore_id", "healthimaging_endpoint_url", "healthimaging_region",
        "import_output_uri", mode="before",
    )  # fmt: skip
    @classmethod
    def _optional_empty(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("keep_imported_days", mode="before")
    @classmethod
    def _forever(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "forever":
                return None
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a number of days or `forever`") from None
        if value is None:
            raise ValueError("give a number of days, or `forever`")
        return value

    @field_validator("tls_profile", "object_store", "tracker", "datastore", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ae_title", mode="before")
    @classmethod
    def _ae_title(cls, value: Any) -> str:
        return _check_ae(value)

    @field_validator("bind", "http_bind", mode="before")
    @classmethod
    def _ip_address(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be an IP address string")
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address (e.g. 0.0.0.0, ::, 127.0.0.1)"
            ) from None

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _calling_aes(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list):
            return value
        result: list[str] = []
        for index, item in enumerate(value, 1):
            ae = _check_ae(item, f"item {index}: AE title")
            if ae not in result:
                result.append(ae)
        return result

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list):
            return value
        result: list[IPNetwork] = []
        for index, item in enumerate(value, 1):
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                candidates: list[IPNetwork] = [item]
            elif isinstance(item, str) and item.strip().lower() == "any":
                candidates = [ipaddress.ip_network(n) for n in _ANY_NETWORKS]
            elif isinstance(item, str):
                try:
                    candidates = [ipaddress.ip_network(item.strip(), strict=False)]
                except ValueError:
                    raise ValueError(
                        f"item {index}: {item!r} is not a network (e.g. 10.0.0.0/8, fc00::/7, any)"
                    ) from None
            else:
                raise ValueError(f"item {index}: a network must be a string like 10.0.0.0/8")
            result.extend(c for c in candidates if c not in result)
        if not result:
            raise ValueError("the allow-list is empty, so every peer would be refused; use 'any'")
        return result

    @field_validator("private_sop_classes", mode="before")
    @classmethod
    def _uids(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list):
            return value
        result: list[str] = []
        for index, item in enumerate(value, 1):
            uid = item.strip() if isinstance(item, str) else item
            if not isinstance(uid, str) or len(uid) > 64 or not _UID_RE.fullmatch(uid):
                raise ValueError(
                    f"item {index}: {item!r} is not a UID (digits and dots, no leading zeros, "
                    "at most 64 characters)"
                )
            if uid not in result:
                result.append(uid)
        return result

    @field_validator("tls_cert_ae_map", mode="before")
    @classmethod
    def _cert_ae_map_parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return {}
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f'must be a JSON object like {{"cn": ["AE1", "AE2"]}}: {exc.msg}'
                ) from None
        if not isinstance(value, Mapping):
            raise ValueError('must be a mapping like {"cn": ["AE1", "AE2"]}')
        result: dict[str, list[str]] = {}
        for cn, aes in value.items():
            if not isinstance(cn, str) or not cn.strip():
                raise ValueError("a certificate CN must be a non-empty string")
            aes = _split_list(aes)
            if not isinstance(aes, list) or not aes:
                raise ValueError(f"CN {cn!r}: give a non-empty list of AE titles")
            result[cn.strip()] = [_check_ae(ae, f"CN {cn!r}: AE title") for ae in aes]
        return result

    @field_validator("tls_cert_ae_map", mode="after")
    @classmethod
    def _cert_ae_map_needs_mtls(
        cls, value: dict[str, list[str]], info: ValidationInfo
    ) -> dict[str, list[str]]:
        if value and "tls_ca" in info.data and info.data["tls_ca"] is None:
            raise ValueError(
                f"client certificates are only checked with mutual TLS: set {env_var('tls_ca')}"
            )
        return value

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="after")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {str(value)!r} does not exist or is not a file")
        return value

    @field_validator("tls_cert", mode="after")
    @classmethod
    def _some_listener(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None and info.data.get("plain_enabled") is False:
            raise ValueError(
                f"{env_var('plain_enabled')} is false and TLS is not configured: "
                "nothing would listen"
            )
        return value

    @field_validator("tls_key", mode="after")
    @classmethod
    def _key_with_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert" not in info.data:  # tls_cert itself failed; reported there
            return value
        cert = info.data["tls_cert"]
        if cert is not None and value is None:
            raise ValueError(f"required when {env_var('tls_cert')} is set")
        if cert is None and value is not None:
            raise ValueError(f"set without {env_var('tls_cert')}: give both or neither")
        return value

    @field_validator("tls_ca", mode="after")
    @classmethod
    def _ca_with_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("tls_cert", False) is None:
            raise ValueError(f"mutual TLS needs TLS: set {env_var('tls_cert')} too")
        return value

    @field_validator("s3_bucket", mode="after")
    @classmethod
    def _bucket(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            value = value.strip()
            if value.lower().startswith("s3://") or "/" in value:
                raise ValueError(
                    f"give the bucket name only (no s3:// and no path; "
                    f"the key prefix goes in {env_var('s3_prefix')})"
                )
        if value is None and info.data.get("object_store") == "s3":
            raise ValueError(f"required when {env_var('object_store')} is s3")
        return value

    @field_validator("s3_prefix", mode="after")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip().strip("/")

    @field_validator(
        "s3_endpoint_url", "dynamodb_endpoint_url", "healthimaging_endpoint_url", mode="after"
    )
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value.strip()):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.strip() if value is not None else None

    @field_validator("dynamodb_table_prefix", mode="after")
    @classmethod
    def _table_prefix(cls, value: str) -> str:
        # DynamoDB table names: [a-zA-Z0-9_.-]{3,255}; the longest suffix is "-instances".
        value = value.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,240}", value):
            raise ValueError(
                f"{value!r} cannot start a DynamoDB table name (1-240 characters of "
                "A-Z a-z 0-9 _ . -)"
            )
        return value

    @field_validator("healthimaging_datastore_id", mode="after")
    @classmethod
    def _datastore_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-z]{32}", value.strip()):
            raise ValueError(f"{value!r} is not a datastore id (32 characters of 0-9 a-z)")
        if value is None and info.data.get("datastore") == "healthimaging":
            raise ValueError(f"required when {env_var('datastore')} is healthimaging")
        return value.strip() if value is not None else None

    @field_validator("import_role_arn", mode="after")
    @classmethod
    def _role_arn(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+", value):
            raise ValueError(
                f"{value!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        if not value and info.data.get("datastore") == "healthimaging":
            raise ValueError(
                f"required when {env_var('datastore')} is healthimaging: the role "
                "HealthImaging assumes to read the landing bucket and write the job outputs"
            )
        return value

    @field_validator("import_output_uri", mode="after")
    @classmethod
    def _output_uri(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if info.data.get("object_store") != "s3":
            raise ValueError(
                f"only with {env_var('object_store')}=s3 (the local object store keeps job "
                "outputs under data_dir/objects/import-output/)"
            )
        match = re.fullmatch(r"s3://([a-z0-9][.\-a-z0-9]{1,61}[a-z0-9])(/.*)?", value)
        if not match:
            raise ValueError(f"{value!r} is not an s3://bucket/prefix/ URI")
        path = (match.group(2) or "").strip("/")
        bucket, prefix = info.data.get("s3_bucket"), info.data.get("s3_prefix", "")
        if match.group(1) == bucket and path == prefix:
            raise ValueError(
                "must not be the landing prefix itself: give a folder outside every batch, "
                f"e.g. s3://{bucket}/{prefix + '/' if prefix else ''}import-output/"
            )
        return f"s3://{match.group(1)}/{path}/" if path else f"s3://{match.group(1)}/"

    # Cross-field checks that need every field. ``field`` in the context names the setting
    # the message is reported under.
    @model_validator(mode="after")
    def _ports_distinct(self) -> Settings:
        def overlap(a: str, b: str) -> bool:
            return (
                a == b
                or ipaddress.ip_address(a).is_unspecified
                or (ipaddress.ip_address(b).is_unspecified)
            )

        if self.plain_enabled and self.tls_enabled and self.port and self.port == self.tls_port:
            raise PydanticCustomError(
                "port_conflict",
                "{detail}",
                {"field": "tls_port", "detail": f"same as {env_var('port')} ({self.port})"},
            )
        if self.http_port > 0 and overlap(self.bind, self.http_bind):
            dicom_ports = {("port", self.port)} if self.plain_enabled else set()
            if self.tls_enabled:
                dicom_ports.add(("tls_port", self.tls_port))
            for name, number in sorted(dicom_ports):
                if number == self.http_port:
                    raise PydanticCustomError(
                        "port_conflict",
                        "{detail}",
                        {"field": "http_port", "detail": f"same as {env_var(name)} ({number})"},
                    )
        return self

    @model_validator(mode="after")
    def _healthimaging_input(self) -> Settings:
        if (
            self.datastore == "healthimaging"
            and self.object_store == "local"
            and self.healthimaging_endpoint_url is None
        ):
            raise PydanticCustomError(
                "combination",
                "{detail}",
                {
                    "field": "datastore",
                    "detail": f"AWS HealthImaging imports from S3 only: set "
                    f"{env_var('object_store')}=s3 (a local object store works only with a "
                    f"HealthImaging-compatible endpoint in "
                    f"{env_var('healthimaging_endpoint_url')})",
                },
            )
        return self


# --------------------------------------------------------------------------------------------
# loading and documentation


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: STORE_SCP_* variables that are not settings: the TOML file, the crash tests' fail points.
_NOT_SETTINGS = frozenset({CONFIG_ENV, "STORE_SCP_FAILPOINTS"})


def _unknown_variables() -> list[tuple[str, str]]:
    """STORE_SCP_* variables that name no setting: a misspelt one would be ignored, and with
    it the setting the operator meant (an allow-list, say)."""
    known = sorted({env_var(name) for name in Settings.model_fields} | _NOT_SETTINGS)
    suffixes = [name.removeprefix(ENV_PREFIX) for name in known]
    problems = []
    for name in sorted(os.environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            problems.append((name, f"unknown setting{hint}"))
    return problems


def _toml_keys(path: Path | None) -> set[str]:
    try:
        return set(tomllib.loads(path.read_text())) if path is not None else set()
    except (OSError, ValueError):
        return set()


def _problems(
    exc: ValidationError, *, given: Mapping[str, Any], toml: Path | None
) -> list[tuple[str, str]]:
    """One (where, message) per error: a value from the TOML file is named by its key in that
    file, any other by its environment variable."""
    in_toml = _toml_keys(toml) - set(given)
    environment = {name.upper() for name in os.environ}
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc", ())
        ctx = error.get("ctx") or {}
        field = str(loc[0]) if loc else str(ctx.get("field", ""))
        var = env_var(field) if field else ENV_PREFIX.rstrip("_")
        if field in in_toml and var not in environment:
            var = f"{field} in {toml}"
        if error["type"] == "extra_forbidden":
            problems.append((var, "unknown setting"))
            continue
        message = str(error.get("msg", "invalid value"))
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        where = [f"item {p + 1}" if isinstance(p, int) else repr(p) for p in loc[1:]]
        if where:
            message = f"{' '.join(where)}: {message}"
        if error["type"] not in ("value_error", "port_conflict", "combination") and loc:
            message = f"{message} (got {_short(error.get('input'))})"
        problems.append((var, message))
    return problems


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings (see :meth:`Settings.load`); raise ConfigError."""
    return Settings.load(config_file=config_file, **overrides)


def _render_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{', '.join(str(v) for v in value)}`" if value else "(empty)"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`" if value else "(empty)"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{value}`"


def describe() -> str:
    """A Markdown table of every setting: name, environment variable, default, description."""
    lines = [
        "| Setting | Environment variable | Default | Description |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = _render_default(field.get_default(call_default_factory=True))
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `{env_var(name)}` | {default} | {description} |")
    return "\n".join(lines) + "\n"
