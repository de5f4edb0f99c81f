"""DynamoDB tables made by an older version, brought up to date by `store-scp create-tables`.

The older version's tables are made from today's definitions without the indexes added since
the first version (`by_job`, `by_cleanup` on receipts, `by_unfinished` on jobs), and its items
by today's tracker with the attributes of those indexes removed: what the older code wrote.
Everything runs against a moto server over HTTP; the upgrade itself through the CLI.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from store_scp.tracking.base import Admission, ImportedInstance, JobStatus, Receipt, State
from store_scp.tracking.dynamodb import DynamoDbTracker, TableNames, table_definitions
from tests.integration.moto_server import (  # noqa: F401
    FAKE_AWS_ENV,
    _stop,
    aws_env,
    moto_endpoint,
    start_moto_server,
)
from tests.serverproc import run_cli

T0 = 1_700_000_000.0
#: The indexes the first version's tables lacked, by table, and their sparse attributes.
ADDED_SINCE = {"receipts": {"by_job", "by_cleanup"}, "jobs": {"by_unfinished"}}
SPARSE = ("g_job", "g_cleanup", "g_unfinished")


def receipt(batch_id: str, sop: str) -> Receipt:
    return Receipt(
        key=f"{batch_id}/1.2.3/1.2.3.1/{sop}.dcm" if batch_id else f"{sop}.dcm",
        batch_id=batch_id,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=100,
        sha256="ab" * 32,
        calling_ae="CT1",
        peer="192.0.2.7:40000",
        received_at=T0,
    )


def create_as_older_version(client: Any, tables: TableNames) -> None:
    """The tables as the first version created them: without the indexes added since."""
    for role in ("receipts", "attempts", "instances", "batches", "jobs", "counters"):
        spec = next(s for s in table_definitions(tables) if s["TableName"] == getattr(tables, role))
        dropped = ADDED_SINCE.get(role, set())
        kept = [i for i in spec.get("GlobalSecondaryIndexes", []) if i["IndexName"] not in dropped]
        used = {k["AttributeName"] for i in kept for k in i["KeySchema"]}
        used |= {k["AttributeName"] for k in spec["KeySchema"]}
        spec["AttributeDefinitions"] = [
            d for d in spec["AttributeDefinitions"] if d["AttributeName"] in used
        ]
        if kept:
            spec["GlobalSecondaryIndexes"] = kept
        else:
            spec.pop("GlobalSecondaryIndexes", None)
        client.create_table(BillingMode="PAY_PER_REQUEST", **spec)


def strip_sparse_attributes(client: Any, tables: TableNames) -> int:
    """Remove the attributes of the added indexes from every item, as the older code never
    wrote them; returns how many items had one."""
    stripped = 0
    for table, key in ((tables.receipts, "key"), (tables.jobs, "batch_id")):
        for item in client.scan(TableName=table)["Items"]:
            present = [name for name in SPARSE if name in item]
            if present:
                stripped += 1
                client.update_item(
                    TableName=table,
                    Key={key: item[key]},
                    UpdateExpression="REMOVE " + ", ".join(present),
                )
    return stripped


def index_names(client: Any, table: str) -> set[str]:
    description = client.describe_table(TableName=table)["Table"]
    return {i["IndexName"] for i in description.get("GlobalSecondaryIndexes", [])}


@pytest.fixture
def older(
    moto_endpoint: str,  # noqa: F811
    aws_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[DynamoDbTracker, dict[str, str]]]:
    """A tracker on tables and items of the first version, and the CLI's environment."""
    prefix = f"upgrade-{uuid.uuid4().hex[:12]}"
    tracker = DynamoDbTracker(prefix, endpoint_url=moto_endpoint, region_name="us-east-1")
    create_as_older_version(tracker._client, tracker.tables)
    env = {
        **FAKE_AWS_ENV,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "STORE_SCP_DATA_DIR": str(tmp_path / "data"),
        "STORE_SCP_TRACKER": "dynamodb",
        "STORE_SCP_DYNAMODB_TABLE_PREFIX": prefix,
        "STORE_SCP_DYNAMODB_ENDPOINT_URL": moto_endpoint,
        "STORE_SCP_DYNAMODB_REGION": "us-east-1",
    }
    yield tracker, env
    tracker.delete_tables()


def sealed_job(tracker: DynamoDbTracker, batch_id: str, *receipts: Receipt) -> None:
    tracker.record_receipts(receipts)
    assert tracker.open_batch(batch_id, f"{batch_id}/", "w1", 60, now=T0)
    assert tracker.seal_batch(batch_id, "w1", now=T0)
    assert tracker.record_job_start(batch_id, "t", "n", now=T0 + 1)
    assert tracker.set_job_id(batch_id, f"job-{batch_id}")
    admitted = tracker.mark_importing([r.key for r in receipts], batch_id, now=T0 + 1)
    assert set(admitted.values()) == {Admission.ACCEPTED}


def test_create_tables_adds_the_missing_indexes_and_fills_in_older_items(
    older: tuple[DynamoDbTracker, dict[str, str]],
) -> None:
    tracker, env = older
    t = tracker.tables
    # What the older version left: a job running (its receipt IMPORTING), a job whose results
    # are recorded (its receipt IMPORTED, cleanup not done yet), a receipt FAILED without a
    # job, one whose cleanup is recorded, one just RECEIVED.
    running, imported = receipt("run", "1.1"), receipt("done", "1.2")
    cleaned, failed, fresh = receipt("done", "1.3"), receipt("", "1.4"), receipt("", "1.5")
    sealed_job(tracker, "run", running)
    sealed_job(tracker, "done", imported, cleaned)
    assert tracker.mark_imported_many(
        "done",
        [ImportedInstance(r.key, "is-1", True) for r in (imported, cleaned)],
        at=T0 + 2,
    ) == {imported.key, cleaned.key}
    assert tracker.record_cleanup(cleaned.key, "deleted", T0 + 3)
    assert tracker.update_job("done", status=JobStatus.COMPLETED, results_at=T0 + 2)
    tracker.record_receipts([failed, fresh])
    assert tracker.mark_failed([failed.key], "not importable: test", at=T0 + 4) == {failed.key}
    # Items that had one of the new attributes: the running job, the receipts of both jobs
    # (g_job), the imported and the failed receipt (g_cleanup).
    assert strip_sparse_attributes(tracker._client, t) == 5

    # The older tables stop start-up, with one line naming what is missing and the fix.
    assert tracker.missing_tables() == []
    assert sorted(tracker.missing_indexes()) == [
        f"by_cleanup on {t.receipts}",
        f"by_job on {t.receipts}",
        f"by_unfinished on {t.jobs}",
    ]
    refused = run_cli(env, "where", "1.2.3")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert f"indexes missing: by_job on {t.receipts}, by_cleanup on {t.receipts}" in (
        refused.stderr
    )
    assert "store-scp create-tables" in refused.stderr

    upgraded = run_cli(env, "create-tables")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.splitlines() == [
        f"filled in g_cleanup on 2 item(s) of {t.receipts} (index by_cleanup)",
        f"filled in g_job on 3 item(s) of {t.receipts} (index by_job)",
        f"filled in g_unfinished on 1 item(s) of {t.jobs} (index by_unfinished)",
        f"added index by_job to {t.receipts}",
        f"added index by_cleanup to {t.receipts}",
        f"added index by_unfinished to {t.jobs}",
    ]
    assert "adding index by_unfinished" in upgraded.stderr
    assert "up to date: 6 change(s)" in upgraded.stderr

    assert {"by_job", "by_cleanup"} <= index_names(tracker._client, t.receipts)
    assert "by_unfinished" in index_names(tracker._client, t.jobs)
    assert tracker.missing_indexes() == []
    # What the new code reads through the added indexes finds what the older code wrote.
    assert [j.batch_id for j in tracker.unfinished_jobs()] == ["run"]
    assert [r.key for r in tracker.receipts_in_job("run")] == [running.key]
    assert [r.key for r in tracker.receipts_in_job("done")] == sorted([imported.key, cleaned.key])
    due = tracker.cleanup_due(keep_imported_seconds=0, now=T0 + 10)
    assert [(r.key, r.state) for r in due] == [
        (imported.key, State.IMPORTED),
        (failed.key, State.FAILED),
    ]
    assert run_cli(env, "where", "1.2.3").returncode == 0

    # A second run changes nothing.
    again = run_cli(env, "create-tables")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "up to date: nothing to change" in again.stderr


def test_indexes_are_added_one_per_update_table_with_their_key_definitions(
    older: tuple[DynamoDbTracker, dict[str, str]],
) -> None:
    """DynamoDB builds one index of a table at a time: one Create per UpdateTable, with the
    table's attribute definitions and the new index's keys. (moto builds an index at once,
    so the wait between two is not exercised here.)"""
    tracker, _env = older
    requests: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: object) -> None:
        requests.append(params)

    events = tracker._client.meta.events
    events.register("provide-client-params.dynamodb.UpdateTable", record)
    try:
        assert len(tracker.create_tables()) == 3
    finally:
        events.unregister("provide-client-params.dynamodb.UpdateTable", record)
    t = tracker.tables
    created = [
        (r["TableName"], [u["Create"]["IndexName"] for u in r["GlobalSecondaryIndexUpdates"]])
        for r in requests
    ]
    assert created == [
        (t.receipts, ["by_job"]),
        (t.receipts, ["by_cleanup"]),
        (t.jobs, ["by_unfinished"]),
    ]
    defined = [{d["AttributeName"] for d in r["AttributeDefinitions"]} for r in requests]
    assert {"key", "g_sop", "received_at", "g_job"} <= defined[0]
    assert {"g_job", "g_cleanup", "state_changed_at"} <= defined[1]
    assert {"batch_id", "status", "created_at", "g_unfinished"} <= defined[2]
    assert tracker.missing_indexes() == []


def test_a_fill_loses_to_a_change_made_meanwhile(
    older: tuple[DynamoDbTracker, dict[str, str]],
    moto_endpoint: str,  # noqa: F811
) -> None:
    """A server records a receipt's cleanup between the upgrade's read of the receipt and its
    write: the conditional write fails, the receipt is read again and left out of
    `by_cleanup`, where the server's change put it."""
    tracker, _env = older
    imported = receipt("done", "2.1")
    sealed_job(tracker, "done", imported)
    assert tracker.mark_imported(imported.key, "done", "is-1", True, at=T0 + 2)
    strip_sparse_attributes(tracker._client, tracker.tables)
    server = DynamoDbTracker(tables=tracker.tables, endpoint_url=moto_endpoint)
    events = tracker._client.meta.events
    interleaved: list[set[str]] = []

    def server_cleans_up(params: dict[str, Any], **_: object) -> None:
        if params["TableName"] == tracker.tables.receipts and not interleaved:
            interleaved.append(set(params["ExpressionAttributeNames"].values()))
            assert server.record_cleanup(imported.key, "deleted", T0 + 3)

    events.register("before-parameter-build.dynamodb.UpdateItem", server_cleans_up)
    try:
        changes = tracker.create_tables()
    finally:
        events.unregister("before-parameter-build.dynamodb.UpdateItem", server_cleans_up)
    assert {"g_job", "g_cleanup"} <= interleaved[0]  # what the fill was about to write
    assert f"filled in g_job on 1 item(s) of {tracker.tables.receipts} (index by_job)" in changes
    assert not any("g_cleanup" in line for line in changes)
    item = tracker._client.get_item(
        TableName=tracker.tables.receipts, Key={"key": {"S": imported.key}}, ConsistentRead=True
    )["Item"]
    assert "g_cleanup" not in item and item["cleanup_action"] == {"S": "deleted"}
    assert item["g_job"] == {"S": "done"}
    assert tracker.cleanup_due(keep_imported_seconds=0, now=T0 + 10) == []


def test_a_policy_without_describe_table_starts_as_before(
    tmp_path: Path,
    aws_env: dict[str, str],  # noqa: F811
) -> None:
    """DescribeTable denied (a narrow IAM policy): no table and no index counts as missing,
    as before indexes were checked. Its own moto server enforces IAM."""
    proc, endpoint = start_moto_server(tmp_path / "moto-iam.log")
    try:
        admin = DynamoDbTracker("narrow", endpoint_url=endpoint, region_name="us-east-1")
        create_as_older_version(admin._client, admin.tables)
        assert len(admin.missing_indexes()) == 3
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="gateway")
        iam.put_user_policy(
            UserName="gateway",
            PolicyName="tracker",
            PolicyDocument=(
                '{"Version": "2012-10-17", "Statement": ['
                '{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"},'
                '{"Effect": "Deny", "Action": "dynamodb:DescribeTable", "Resource": "*"}]}'
            ),
        )
        key = iam.create_access_key(UserName="gateway")["AccessKey"]
        # From now on, every request is checked against IAM.
        urllib.request.urlopen(
            urllib.request.Request(
                endpoint + "/moto-api/reset-auth",
                data=b"0",
                headers={"Content-Type": "text/plain"},
                method="POST",
            ),
            timeout=10,
        ).close()
        client = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            aws_session_token=None,
        )
        narrow = DynamoDbTracker(tables=admin.tables, client=client)
        with pytest.raises(client.exceptions.ClientError) as denied:
            client.describe_table(TableName=admin.tables.jobs)
        assert "AccessDenied" in str(denied.value)
        assert narrow.missing_tables() == []
        assert narrow.missing_indexes() == []
        assert narrow.jobs() == []  # the policy lets the tracker work
    finally:
        _stop(proc)
