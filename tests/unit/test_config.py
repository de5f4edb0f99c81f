"""The settings object: sources, priorities, validation messages, generated documentation."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from store_scp import config
from store_scp.config import ConfigError, Settings, describe, env_var, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STORE_SCP_* variable of the machine running the tests leaks in."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("STORE_SCP_"):
            monkeypatch.delenv(name)
    return monkeypatch


def lines_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(exc.value).splitlines()


def test_defaults() -> None:
    s = load_settings()
    assert s.ae_title == "STORE_SCP"
    assert (s.bind, s.port, s.plain_enabled) == ("0.0.0.0", 11112, True)
    assert (s.tls_port, s.tls_cert, s.tls_key, s.tls_ca) == (2762, None, None, None)
    assert s.tls_profile == "bcp195"
    assert s.tls_cert_ae_map == {}
    assert s.tls_handshake_timeout == 10
    assert not s.tls_enabled and not s.mutual_tls
    assert (s.http_bind, s.http_port, s.http_enabled) == ("0.0.0.0", 8080, True)
    assert s.data_dir == Path("store-scp-data")
    assert s.require_called_ae is True
    assert s.allowed_calling_aes == []
    assert [str(n) for n in s.allowed_networks] == [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    ]
    assert (s.max_associations, s.max_associations_per_ae) == (64, 16)
    assert s.max_pdu_length == 1048576
    assert s.max_object_size == 4 * 1024**3
    assert (s.artim_timeout, s.acse_timeout, s.dimse_timeout) == (30, 30, 60)
    assert (s.idle_timeout, s.max_association_lifetime, s.shutdown_grace) == (300, 14400, 30)
    assert s.fsync is True
    assert s.processes == 1
    assert s.private_sop_classes == []
    assert s.object_store == "local"
    assert (s.s3_bucket, s.s3_prefix, s.s3_endpoint_url) == (None, "", None)
    assert (s.s3_region, s.s3_kms_key_id) == (None, None)
    assert s.tracker == "sqlite"
    assert (s.log_level, s.log_phi) == ("INFO", False)


def test_env_overrides(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_AE_TITLE", "  MY_SCP ")
    clean_env.setenv("STORE_SCP_PORT", "104")
    clean_env.setenv("STORE_SCP_FSYNC", "false")
    clean_env.setenv("STORE_SCP_BIND", "::")
    clean_env.setenv("STORE_SCP_ARTIM_TIMEOUT", "2.5")
    clean_env.setenv("STORE_SCP_LOG_LEVEL", "debug")
    clean_env.setenv("STORE_SCP_DATA_DIR", "/srv/store-scp")
    s = load_settings()
    assert s.ae_title == "MY_SCP"
    assert s.port == 104
    assert s.fsync is False
    assert s.bind == "::"
    assert s.artim_timeout == 2.5
    assert s.log_level == "DEBUG"
    assert s.data_dir == Path("/srv/store-scp")


def test_env_comma_lists(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_ALLOWED_CALLING_AES", "CT1, MR_2 ,PACS")
    clean_env.setenv("STORE_SCP_ALLOWED_NETWORKS", "10.1.2.0/24,2001:db8::/32, 192.168.1.7")
    clean_env.setenv("STORE_SCP_PRIVATE_SOP_CLASSES", "1.2.3.4,1.2.840.99999.1")
    s = load_settings()
    assert s.allowed_calling_aes == ["CT1", "MR_2", "PACS"]
    assert s.allowed_networks == [
        ipaddress.ip_network("10.1.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.168.1.7/32"),
    ]
    assert s.private_sop_classes == ["1.2.3.4", "1.2.840.99999.1"]


def test_env_json_lists_and_map(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for f in (cert, key, ca):
        f.write_text("pem")
    clean_env.setenv("STORE_SCP_ALLOWED_CALLING_AES", '["CT1", "MR 2"]')
    clean_env.setenv("STORE_SCP_ALLOWED_NETWORKS", '["10.0.0.0/8", "fd00::/8"]')
    clean_env.setenv("STORE_SCP_TLS_CERT", str(cert))
    clean_env.setenv("STORE_SCP_TLS_KEY", str(key))
    clean_env.setenv("STORE_SCP_TLS_CA", str(ca))
    clean_env.setenv("STORE_SCP_TLS_CERT_AE_MAP", '{"ct1.hospital.example": ["CT1", "CT1B"]}')
    s = load_settings()
    assert s.allowed_calling_aes == ["CT1", "MR 2"]
    assert [str(n) for n in s.allowed_networks] == ["10.0.0.0/8", "fd00::/8"]
    assert s.tls_enabled and s.mutual_tls
    assert s.tls_cert_ae_map == {"ct1.hospital.example": ["CT1", "CT1B"]}


def test_any_network(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_ALLOWED_NETWORKS", "any")
    assert [str(n) for n in load_settings().allowed_networks] == ["0.0.0.0/0", "::/0"]
    clean_env.setenv("STORE_SCP_ALLOWED_NETWORKS", "0.0.0.0/0,::/0")
    assert [str(n) for n in load_settings().allowed_networks] == ["0.0.0.0/0", "::/0"]


def test_network_parsing_is_not_strict() -> None:
    s = load_settings(allowed_networks="10.1.2.3/8")
    assert s.allowed_networks == [ipaddress.ip_network("10.0.0.0/8")]


def test_empty_env_counts_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_TLS_CERT", "")
    clean_env.setenv("STORE_SCP_AE_TITLE", "")
    s = load_settings()
    assert s.tls_cert is None
    assert s.ae_title == "STORE_SCP"


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "store-scp.toml"
    path.write_text(
        'ae_title = "FROM_TOML"\n'
        "port = 4242\n"
        "http_port = -1\n"
        'allowed_calling_aes = ["A", "B"]\n'
        'allowed_networks = ["any"]\n'
        "max_pdu_length = 65536\n"
    )
    s = load_settings(path)
    assert s.ae_title == "FROM_TOML"
    assert s.port == 4242
    assert s.http_port == -1 and not s.http_enabled
    assert s.allowed_calling_aes == ["A", "B"]
    assert s.max_pdu_length == 65536
    assert Settings.load(config_file=path).port == 4242


def test_toml_file_from_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("port = 4343\n")
    clean_env.setenv("STORE_SCP_CONFIG", str(path))
    assert Settings().port == 4343
    assert load_settings().port == 4343


def test_priority_init_over_env_over_toml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = 1001\nae_title = "TOML"\nhttp_port = 1003\n')
    clean_env.setenv("STORE_SCP_PORT", "2001")
    clean_env.setenv("STORE_SCP_AE_TITLE", "ENV")
    s = load_settings(path, port=3001)
    assert s.port == 3001  # init wins over env and file
    assert s.ae_title == "ENV"  # env wins over file
    assert s.http_port == 1003  # file wins over default


def test_none_overrides_are_ignored(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_PORT", "2001")
    assert load_settings(port=None, ae_title=None).port == 2001


def test_toml_missing_or_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "missing.toml")
    assert lines_of(exc)[0].startswith("STORE_SCP_CONFIG: ")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match=r"^STORE_SCP_CONFIG: .*not valid TOML"):
        load_settings(bad)


def test_toml_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert lines_of(exc) == [f"prot in {path}: unknown setting"]


def test_a_misspelt_variable_stops_start_up(clean_env: pytest.MonkeyPatch) -> None:
    """Ignored, it would leave the setting meant at its default: here, any calling AE."""
    clean_env.setenv("STORE_SCP_ALLOWED_CALLING_AE", "CT1")
    clean_env.setenv("STORE_SCP_ZZZ", "1")
    clean_env.setenv("STORE_SCP_FAILPOINTS", "")  # not a setting, but ours
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert lines_of(exc) == [
        "STORE_SCP_ALLOWED_CALLING_AE: unknown setting;"
        " did you mean STORE_SCP_ALLOWED_CALLING_AES?",
        "STORE_SCP_ZZZ: unknown setting",
    ]


def test_a_bad_value_is_named_where_it_was_given(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The operator looks where the line points: the TOML key, or the variable when the
    environment set it (the variable wins over the file)."""
    path = tmp_path / "c.toml"
    path.write_text('port = 70000\nhttp_port = 70001\nae_title = "OK"\n')
    clean_env.setenv("STORE_SCP_HTTP_PORT", "70002")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert lines_of(exc) == [
        f"port in {path}: Input should be less than or equal to 65535 (got 70000)",
        "STORE_SCP_HTTP_PORT: Input should be less than or equal to 65535 (got '70002')",
    ]


BAD_VALUES: list[tuple[str, Any]] = [
    ("ae_title", "    "),
    ("ae_title", "A" * 17),
    ("ae_title", "BACK\\SLASH"),
    ("ae_title", "TAB\tAE"),
    ("bind", "not-an-ip"),
    ("port", 65536),
    ("port", -1),
    ("port", "abc"),
    ("tls_port", 70000),
    ("tls_profile", "tls13"),
    ("tls_handshake_timeout", 0),
    ("http_bind", "localhost:80"),
    ("http_port", -2),
    ("allowed_calling_aes", "GOOD,A\\B"),
    ("allowed_networks", "10.0.0.0/33"),
    ("allowed_networks", "[]"),
    ("max_associations", 0),
    ("max_associations_per_ae", 0),
    ("max_pdu_length", 0),
    ("max_pdu_length", 4095),
    ("max_pdu_length", 16777217),
    ("max_object_size", 0),
    ("artim_timeout", 0),
    ("acse_timeout", -1),
    ("dimse_timeout", "nan"),
    ("idle_timeout", 0),
    ("max_association_lifetime", 0),
    ("shutdown_grace", -5),
    ("processes", 0),
    ("processes", 65),
    ("private_sop_classes", "1.2.3,1.2.abc"),
    ("private_sop_classes", "1." + "1" * 63),
    ("private_sop_classes", "1.02.3"),
    ("object_store", "gcs"),
    ("s3_endpoint_url", "minio:9000"),
    ("tracker", "dynamodb-typo"),
    ("log_level", "TRACE"),
    ("fsync", "perhaps"),
    ("tls_cert_ae_map", "not json"),
    ("keep_imported_days", -1),
    ("keep_imported_days", "a week"),
    ("keep_imported_days", "nan"),
]


def test_keep_imported_days(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert load_settings().keep_imported_days == 7
    for text, days in (("0", 0), ("1.5", 1.5), ("forever", None), (" Forever ", None)):
        clean_env.setenv("STORE_SCP_KEEP_IMPORTED_DAYS", text)
        assert load_settings().keep_imported_days == days
    clean_env.delenv("STORE_SCP_KEEP_IMPORTED_DAYS")
    toml = tmp_path / "c.toml"
    toml.write_text('keep_imported_days = "forever"\n')
    assert load_settings(toml).keep_imported_days is None
    toml.write_text("keep_imported_days = 30\n")
    assert load_settings(toml).keep_imported_days == 30


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_names_env_var(field: str, value: Any, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(env_var(field), str(value))
    with pytest.raises(ConfigError) as exc:
        load_settings()
    lines = lines_of(exc)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"STORE_SCP_{field.upper()}: "), lines
    assert len(lines[0]) > len(f"STORE_SCP_{field.upper()}: ") + 5


def test_every_bad_value_gets_its_own_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_PORT", "99999")
    clean_env.setenv("STORE_SCP_MAX_PDU_LENGTH", "0")
    with pytest.raises(ConfigError) as exc:
        load_settings(ae_title="", processes=100)
    lines = lines_of(exc)
    assert sorted(line.split(":")[0] for line in lines) == [
        "STORE_SCP_AE_TITLE",
        "STORE_SCP_MAX_PDU_LENGTH",
        "STORE_SCP_PORT",
        "STORE_SCP_PROCESSES",
    ]
    assert exc.value.problems[0][0] == "STORE_SCP_AE_TITLE"
    assert "99999" in next(line for line in lines if line.startswith("STORE_SCP_PORT"))


def test_tls_cert_without_key_rejected(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("pem")
    with pytest.raises(ConfigError) as exc:
        load_settings(tls_cert=cert)
    assert lines_of(exc) == ["STORE_SCP_TLS_KEY: required when STORE_SCP_TLS_CERT is set"]


def test_tls_key_without_cert_rejected(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("pem")
    with pytest.raises(ConfigError) as exc:
        load_settings(tls_key=key)
    assert [line.split(":")[0] for line in lines_of(exc)] == ["STORE_SCP_TLS_KEY"]


def test_tls_files_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(tls_cert=tmp_path / "nope.pem", tls_key=tmp_path / "nope.key")
    assert [line.split(":")[0] for line in lines_of(exc)] == [
        "STORE_SCP_TLS_CERT",
        "STORE_SCP_TLS_KEY",
    ]
    assert "does not exist" in lines_of(exc)[0]


def test_tls_enabled_with_cert_and_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("pem")
    key.write_text("pem")
    s = load_settings(tls_cert=cert, tls_key=key, tls_profile="non-downgrading")
    assert s.tls_enabled and not s.mutual_tls
    assert s.tls_profile == "non-downgrading"


def test_tls_ca_and_ae_map_need_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    with pytest.raises(ConfigError) as exc:
        load_settings(tls_ca=ca)
    assert [line.split(":")[0] for line in lines_of(exc)] == ["STORE_SCP_TLS_CA"]
    with pytest.raises(ConfigError) as exc:
        load_settings(tls_cert_ae_map={"cn": ["AE"]})
    assert [line.split(":")[0] for line in lines_of(exc)] == ["STORE_SCP_TLS_CERT_AE_MAP"]


def test_nothing_listening_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^STORE_SCP_TLS_CERT: .*nothing would listen"):
        load_settings(plain_enabled=False)


def test_port_conflicts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(port=9000, http_port=9000)
    assert lines_of(exc) == ["STORE_SCP_HTTP_PORT: same as STORE_SCP_PORT (9000)"]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("pem")
    key.write_text("pem")
    with pytest.raises(ConfigError, match=r"^STORE_SCP_TLS_PORT: "):
        load_settings(tls_cert=cert, tls_key=key, tls_port=11112)
    # port 0 (OS-chosen) never conflicts; different addresses do not either
    assert load_settings(port=0, http_port=0).port == 0
    assert load_settings(bind="127.0.0.1", http_bind="127.0.0.2", http_port=11112).http_port


def test_s3_without_bucket_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(object_store="s3")
    assert lines_of(exc) == ["STORE_SCP_S3_BUCKET: required when STORE_SCP_OBJECT_STORE is s3"]


def test_s3_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORE_SCP_OBJECT_STORE", "S3")
    clean_env.setenv("STORE_SCP_S3_BUCKET", "landing-bucket")
    clean_env.setenv("STORE_SCP_S3_PREFIX", "/incoming/")
    clean_env.setenv("STORE_SCP_S3_ENDPOINT_URL", "http://127.0.0.1:5000")
    s = load_settings()
    assert (s.object_store, s.s3_bucket, s.s3_prefix) == ("s3", "landing-bucket", "incoming")
    assert s.s3_endpoint_url == "http://127.0.0.1:5000"
    with pytest.raises(ConfigError, match=r"^STORE_SCP_S3_BUCKET: .*bucket name only"):
        load_settings(s3_bucket="s3://landing-bucket/incoming")


GATEWAY = {
    "object_store": "s3",
    "s3_bucket": "landing",
    "s3_prefix": "incoming",
    "tracker": "dynamodb",
    "datastore": "healthimaging",
    "healthimaging_datastore_id": "0123456789abcdef0123456789abcdef",
    "import_role_arn": "arn:aws:iam::123456789012:role/store-scp-import",
}


def test_on_premises_gateway_settings(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in GATEWAY.items():
        clean_env.setenv(env_var(name), value)
    clean_env.setenv("STORE_SCP_TRACKER", "DynamoDB")
    clean_env.setenv("STORE_SCP_DYNAMODB_TABLE_PREFIX", "scp-prod")
    clean_env.setenv("STORE_SCP_DYNAMODB_ENDPOINT_URL", "http://127.0.0.1:8000")
    s = load_settings()
    assert (s.tracker, s.dynamodb_table_prefix) == ("dynamodb", "scp-prod")
    assert s.dynamodb_endpoint_url == "http://127.0.0.1:8000"
    assert s.import_output_uri is None  # the pipeline uses s3://landing/incoming/import-output/
    assert (
        load_settings(import_output_uri="s3://outputs/hi").import_output_uri == "s3://outputs/hi/"
    )


def test_healthimaging_needs_its_datastore_id_and_role() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(object_store="s3", s3_bucket="landing", datastore="healthimaging")
    assert lines_of(exc) == [
        "STORE_SCP_HEALTHIMAGING_DATASTORE_ID: required when STORE_SCP_DATASTORE is healthimaging",
        "STORE_SCP_IMPORT_ROLE_ARN: required when STORE_SCP_DATASTORE is healthimaging: the role "
        "HealthImaging assumes to read the landing bucket and write the job outputs",
    ]
    with pytest.raises(ConfigError) as exc:
        load_settings(**{**GATEWAY, "healthimaging_datastore_id": "x", "import_role_arn": "r"})
    assert [line.split(":")[0] for line in lines_of(exc)] == [
        "STORE_SCP_HEALTHIMAGING_DATASTORE_ID",
        "STORE_SCP_IMPORT_ROLE_ARN",
    ]


def test_healthimaging_imports_from_s3_unless_a_compatible_endpoint_is_given() -> None:
    local_input = {**GATEWAY, "object_store": "local", "s3_bucket": None}
    with pytest.raises(ConfigError, match=r"^STORE_SCP_DATASTORE: AWS HealthImaging imports "):
        load_settings(**local_input)
    endpoint = "http://127.0.0.1:8090"
    assert load_settings(**local_input, healthimaging_endpoint_url=endpoint).datastore


def test_import_output_uri_checked() -> None:
    with pytest.raises(ConfigError, match=r"^STORE_SCP_IMPORT_OUTPUT_URI: only with .*=s3"):
        load_settings(import_output_uri="s3://outputs/")
    for bad in ("file:///srv/out", "s3://", "https://outputs/x"):
        with pytest.raises(ConfigError, match=r"is not an s3://bucket/prefix/ URI"):
            load_settings(**GATEWAY, import_output_uri=bad)
    with pytest.raises(ConfigError, match=r"must not be the landing prefix itself"):
        load_settings(**GATEWAY, import_output_uri="s3://landing/incoming/")


def test_dynamodb_table_prefix_checked() -> None:
    with pytest.raises(ConfigError, match=r"^STORE_SCP_DYNAMODB_TABLE_PREFIX: 'a b' cannot"):
        load_settings(tracker="dynamodb", dynamodb_table_prefix="a b")


def test_ae_title_stripped_and_unknown_override_rejected() -> None:
    assert load_settings(ae_title=" SCP  ").ae_title == "SCP"
    with pytest.raises(ConfigError) as exc:
        load_settings(no_such_setting=1)
    assert lines_of(exc) == ["STORE_SCP_NO_SUCH_SETTING: unknown setting"]


def test_describe_lists_every_field() -> None:
    table = describe()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `{name}` | `{env_var(name)}` |" in table
    assert "| `port` | `STORE_SCP_PORT` | `11112` |" in table


def test_module_docstring_documents_every_env_var() -> None:
    doc = config.__doc__ or ""
    missing = [env_var(name) for name in Settings.model_fields if env_var(name) not in doc]
    assert not missing
    assert "STORE_SCP_CONFIG" in doc
