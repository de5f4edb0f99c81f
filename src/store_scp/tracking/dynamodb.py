"""DynamoDB adapter of the Tracker port: the AWS deployment, and an on-premises gateway.

The same contract as `tracking.sqlite` (tests/contract runs one suite against both), on six
tables. Every table is on-demand (PAY_PER_REQUEST). The CDK app creates them in AWS with
exactly the layout below (`table_definitions`); `DynamoDbTracker.create_tables()` creates them
for an on-premises gateway, tests and dev.

Upgrades: indexes were added over time (``by_job`` and ``by_cleanup`` on receipts,
``by_unfinished`` on jobs), and the code relies on their sparse attributes. `create_tables` also
brings tables an older version made up to date: it fills in those attributes on the items that
lack them, then adds each missing index. `missing_indexes` lets start-up refuse tables that are
not up to date, as `missing_tables` does for missing ones.

Tables and indexes
------------------
Names are `<table_prefix>-<name>` (or given one by one with `TableNames`). DynamoDB refuses an
empty string as a key value, so the index key attributes `g_*` hold the value with "-" in place
of "" (a UID or batch id never is "-"); the plain attributes keep the value as received.

``receipts``  PK ``key`` (S): one item per receipt.
    Every `Receipt` field; ``state``, ``state_changed_at``, ``attempt`` (N, newest attempt, 0 if
    none), ``job_batch_id`` (the batch whose job runs/ran it), ``image_set_id``, ``is_primary``
    (BOOL), ``image_set_version``, ``reason``, ``cleanup_action``, ``cleanup_at``.
    GSIs, projection ALL:

    - ``by_instance``  ``g_sop`` / ``received_at`` (N): receipts of a SOP instance, `where`.
    - ``by_series``    ``g_series`` / ``received_at``: `where` for a series.
    - ``by_study``     ``g_study`` / ``received_at``: `where` for a study.
    - ``by_batch``     ``g_batch`` / ``key``: the receipts of a batch.
    - ``by_state``     ``g_state`` / ``received_at``: sparse, ``"<STATE>#<shard>"`` while the
      receipt is RECEIVED, IMPORTING or FAILED (absent once IMPORTED, so the bulk of the table
      stays out of it), over `STATE_SHARDS` shards (crc32 of the key) so that no partition of
      the index takes every write: `failures`, `oldest_unimported_age`.
    - ``by_job``       ``g_job`` / ``key``: the batch whose job runs/ran the newest attempt
      (``job_batch_id``), absent without one: `receipts_in_job`.
    - ``by_cleanup``   ``g_cleanup`` / ``state_changed_at``: sparse, ``"<STATE>#<shard>"`` from
      the moment the receipt is IMPORTED or FAILED until its cleanup is recorded:
      `cleanup_due`.

    The cleanup claim is ``cleanup_claimed_by`` / ``cleanup_claim_expires_at``.

``attempts``  PK ``key`` (S), SK ``attempt`` (N): the history of each receipt (`Attempt`, with the
    cleanup of its outcome).

``instances``  PK ``sop_instance_uid`` (S): one item per SOP instance that was ever admitted.
    ``importing_key`` / ``importing_batch``: the receipt IMPORTING now (the lock of ordering
    rule 1); ``imported_key`` / ``imported_received_at``: the newest receipt IMPORTED (rule 2:
    a receipt that sorts before it is superseded).

``batches``  PK ``batch_id`` (S): every `Batch` field.
    GSIs: ``by_phase`` ``g_phase`` / ``phase_at`` (N), sparse: "OPEN" (since opened_at) or
    "SEALED" (since sealed_at) until the batch has a job record: `open_batches`,
    `sealed_batches_without_job`. ``by_owner`` ``g_owner`` / ``batch_id``, sparse: the owner
    while the batch is OPEN and owned: `renew_lease`.

``jobs``  PK ``batch_id`` (S): every `Job` field (``counts`` a map).
    GSIs: ``by_job_id`` ``job_id`` (sparse: set once the datastore answered), ``by_status``
    ``status`` / ``created_at`` (N): `job`, `jobs(status)`. ``by_unfinished`` ``g_unfinished``
    / ``created_at``, sparse: ``"UNFINISHED"`` from the job's start until its results are
    recorded (a few items, written at the job start rate: one partition key is no hot spot):
    `unfinished_jobs`, which the pipeline reads every round.

``counters``  PK ``shard`` (N): one number per receipt state; `counts_by_state` sums the
    `COUNTER_SHARDS` items. Each state change adds to one shard, chosen at random, in the same
    transaction as the change itself, so the counts are exact and no item is a hot spot.

Consistency
-----------
Conditional writes guard every transition: a receipt moves only from the state (and attempt)
it was read in, within a TransactWriteItems that also moves the instance's lock, writes the
attempt and adds to a counter. A cancelled transaction (another writer got there first) is read
again and decided again, a bounded number of times. Sealing (`seal_batch`), starting
(`record_job_start`) and claiming a cleanup (`claim_cleanup`) are single-item conditional
writes: of two workers, exactly one wins. A retry is a transition like any other
(`mark_importing`): of two workers retrying one receipt, one admits it and the other finds it
IMPORTING elsewhere.
Reads that decide (`known_keys`, a receipt before its transition, a lock, a batch, a job) are
strongly consistent reads of the tables. Queries through a GSI (`where`, `failures`,
`receipts_in_batch`, `receipts_in_job`, `cleanup_due`, `receipts_for_instance`, `open_batches`,
`sealed_batches_without_job`, `jobs`, `unfinished_jobs`) are eventually consistent, as GSIs
are: a change can take a moment to appear in them. `unfinished_jobs` reads the jobs it found
again, strongly consistent, and leaves out those whose results were recorded meanwhile.
`jobs()` without a status scans the jobs table (one item per import job: small).
"""

from __future__ import annotations

import random
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from store_scp.tracking.base import (
    SUPERSEDED_REASON,
    Admission,
    Attempt,
    Batch,
    BatchNotSealedError,
    BatchState,
    ImportedInstance,
    Job,
    JobStatus,
    Receipt,
    ReceiptStatus,
    State,
    Tracker,
    TrackerError,
    admission_by_state,
    is_superseded,
)

__all__ = [
    "COUNTER_SHARDS",
    "STATE_SHARDS",
    "DynamoDbTracker",
    "TableNames",
    "table_definitions",
]

#: Shards of the sparse `by_state` index.
STATE_SHARDS = 8
#: Items of the `counters` table.
COUNTER_SHARDS = 32

_MAX_TRANSACT_ITEMS = 100
_FINAL = (State.IMPORTED.value, State.FAILED.value)
#: What a new attempt starts without: the outcome of the one before, and its cleanup. A claim
#: still held stays: the cleanup of the new outcome waits until the old one's has stopped.
_NO_OUTCOME: dict[str, None] = dict.fromkeys(
    ("image_set_id", "is_primary", "image_set_version", "cleanup_action", "cleanup_at")
)
_BATCH_GET = 100
#: Rounds of read, decide, write before a transition gives up with TrackerError.
_MAX_ROUNDS = 12
_EMPTY_KEY = "-"
#: The `g_unfinished` value of a job whose results are not recorded yet.
_UNFINISHED = "UNFINISHED"
#: Seconds between two looks at a table whose index DynamoDB is building.
_POLL_SECONDS = 5.0

_T = TypeVar("_T")
Item = dict[str, Any]  # an item as Python values
AttributeValues = dict[str, dict[str, Any]]  # an item as DynamoDB attribute values
#: Decides on one receipt: (applies?, transaction items, counter deltas).
_Plan = Callable[[Item], tuple[bool, list[dict[str, Any]], Counter[str]]]


@dataclass(frozen=True, slots=True)
class TableNames:
    receipts: str
    attempts: str
    instances: str
    batches: str
    jobs: str
    counters: str

    @classmethod
    def with_prefix(cls, prefix: str) -> TableNames:
        return cls(**{f.name: f"{prefix}-{f.name}" for f in fields(cls)})


class DynamoDbTracker(Tracker):
    """Tracker on DynamoDB tables; thread-safe (boto3 clients are), several processes too."""

    def __init__(
        self,
        table_prefix: str = "store-scp",
        *,
        tables: TableNames | None = None,
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
    ) -> None:
        self.tables = tables or TableNames.with_prefix(table_prefix)
        self._client = client or boto3.client(
            "dynamodb",
            endpoint_url=endpoint_url,
            region_name=region_name,
            config=Config(retries={"mode": "standard", "max_attempts": 10}),
        )

    # -- tables ---------------------------------------------------------------------------

    def create_tables(self, *, progress: Callable[[str], None] | None = None) -> list[str]:
        """Create the six tables (on demand) that are missing, and bring the others, made by
        an older version, up to date: fill in the index attributes their items lack
        (`_BACKFILLS`), then add every missing index. Returns what it changed, one line each
        (none when all was up to date); `progress` hears each step as it starts.

        Idempotent, and safe beside running servers: a fill is a conditional write on the
        attributes it was decided from, and DynamoDB builds an index online. Filling comes
        first so that an interrupted run leaves an index missing, which the start-up check
        reports, never an index that misses items. Adding an index waits until it is ACTIVE:
        on a large table that takes a while; interrupted, the next run waits for it again."""
        say = progress or (lambda _line: None)
        specs = table_definitions(self.tables)
        created: list[str] = []
        for spec in specs:
            try:
                self._client.create_table(BillingMode="PAY_PER_REQUEST", **spec)
            except ClientError as exc:
                if _code(exc) != "ResourceInUseException":
                    raise
            else:
                created.append(spec["TableName"])
        changes = [f"created {name}" for name in created]
        waiter = self._client.get_waiter("table_exists")
        for spec in specs:
            waiter.wait(TableName=spec["TableName"], WaiterConfig={"Delay": 1})
        by_name = {spec["TableName"]: spec for spec in specs}
        for backfill in _BACKFILLS:
            table = getattr(self.tables, backfill.table)
            if table not in created:
                changes += self._backfill(by_name[table], backfill, say)
        for spec in specs:
            if spec["TableName"] not in created:
                changes += self._add_indexes(spec, say)
        return changes

    def missing_tables(self) -> list[str]:
        """The tables DescribeTable says do not exist. A table it cannot describe (access
        denied, ...) counts as present: a narrow IAM policy must not stop a working tracker."""
        missing = []
        for name in (getattr(self.tables, f.name) for f in fields(TableNames)):
            try:
                self._client.describe_table(TableName=name)
            except ClientError as exc:
                if _code(exc) == "ResourceNotFoundException":
                    missing.append(name)
        return missing

    def missing_indexes(self) -> list[str]:
        """The indexes an existing table lacks (a table of an older version), or has but not
        ACTIVE yet, as "<index> on <table>". A table DescribeTable cannot describe is left
        out, as in `missing_tables`: missing there, or access denied (counts as complete)."""
        missing = []
        for spec in table_definitions(self.tables):
            table = spec["TableName"]
            if "GlobalSecondaryIndexes" not in spec:
                continue
            try:
                statuses = _index_statuses(self._describe(table))
            except ClientError:
                continue
            for index in spec["GlobalSecondaryIndexes"]:
                status = statuses.get(index["IndexName"])
                if status != "ACTIVE":
                    state = f" ({status})" if status else ""
                    missing.append(f"{index['IndexName']} on {table}{state}")
        return missing

    def delete_tables(self) -> None:
        """Delete the six tables (tests and dev)."""
        for name in (getattr(self.tables, f.name) for f in fields(TableNames)):
            try:
                self._client.delete_table(TableName=name)
            except ClientError as exc:
                if _code(exc) != "ResourceNotFoundException":
                    raise

    def _describe(self, table: str) -> dict[str, Any]:
        return dict(self._client.describe_table(TableName=table)["Table"])

    def _backfill(
        self, spec: Mapping[str, Any], backfill: _Backfill, say: Callable[[str], None]
    ) -> list[str]:
        """Scan a table and fill in the index attributes its items lack; one line per index
        that gained items."""
        table = spec["TableName"]
        say(f"reading {table} for items written by an older version")
        names = {f"#p{i}": name for i, name in enumerate(backfill.reads)}
        filled: Counter[str] = Counter()
        for item in self._items(
            "scan",
            TableName=table,
            ProjectionExpression=", ".join(names),
            ExpressionAttributeNames=names,
        ):
            filled.update(self._fill(table, backfill, item))
        index_of = {
            gsi["KeySchema"][0]["AttributeName"]: gsi["IndexName"]
            for gsi in spec.get("GlobalSecondaryIndexes", [])
        }
        return [
            f"filled in {attribute} on {count} item(s) of {table} (index {index_of[attribute]})"
            for attribute, count in sorted(filled.items())
        ]

    def _fill(self, table: str, backfill: _Backfill, item: Item) -> list[str]:
        """Set what `backfill.gaps` finds missing on one item, on condition that the
        attributes it decided from are unchanged; if they changed, read the item again and
        decide again. Returns the attributes it set."""
        key_name = backfill.reads[0]
        key = {key_name: item[key_name]}
        for round_ in range(_MAX_ROUNDS):
            gaps = backfill.gaps(item)
            if not gaps:
                return []
            names: dict[str, str] = {}
            values: Item = {}
            unchanged: list[str] = []
            for i, name in enumerate(backfill.reads):
                names[f"#c{i}"] = name
                if name in item:
                    values[f":c{i}"] = item[name]
                    unchanged.append(f"#c{i} = :c{i}")
                else:
                    unchanged.append(f"attribute_not_exists(#c{i})")
            condition = (" AND ".join(unchanged), names, values)
            update = self._update(table, key, set_=gaps, condition=condition)
            if self._conditional_update(update):
                return list(gaps)
            fresh = self._get(table, key)
            if fresh is None:
                return []
            item = fresh
            _backoff(round_)
        raise TrackerError(f"could not fill in the index attributes of an item of {table}")

    def _add_indexes(self, spec: Mapping[str, Any], say: Callable[[str], None]) -> list[str]:
        """Add the table's missing indexes one at a time (DynamoDB builds one at a time per
        table), each only once the table and its indexes are ACTIVE; wait for the last."""
        table = spec["TableName"]
        added: list[str] = []
        for index in spec.get("GlobalSecondaryIndexes", []):
            name = index["IndexName"]
            for round_ in range(_MAX_ROUNDS):
                description = self._settled(table, say)
                if name in _index_statuses(description):
                    break
                say(f"adding index {name} to {table}")
                # The table's attribute definitions, and those of the new index's keys.
                keys = {k["AttributeName"] for k in index["KeySchema"]}
                definitions = {d["AttributeName"]: d for d in description["AttributeDefinitions"]}
                for d in spec["AttributeDefinitions"]:
                    if d["AttributeName"] in keys:
                        definitions[d["AttributeName"]] = d
                create = dict(index)
                throughput = description.get("ProvisionedThroughput") or {}
                if throughput.get("ReadCapacityUnits"):  # a provisioned table's index is too
                    create["ProvisionedThroughput"] = {
                        "ReadCapacityUnits": throughput["ReadCapacityUnits"],
                        "WriteCapacityUnits": throughput["WriteCapacityUnits"],
                    }
                try:
                    self._client.update_table(
                        TableName=table,
                        AttributeDefinitions=list(definitions.values()),
                        GlobalSecondaryIndexUpdates=[{"Create": create}],
                    )
                except ClientError as exc:
                    # Busy, or another run of create-tables added it first: look again.
                    busy = _code(exc) in {"ResourceInUseException", "LimitExceededException"}
                    if not busy and name not in _index_statuses(self._describe(table)):
                        raise
                    _backoff(round_)
                    continue
                added.append(f"added index {name} to {table}")
                break
            else:
                raise TrackerError(f"could not add index {name} to {table}: the table is busy")
        self._settled(table, say)
        return added

    def _settled(self, table: str, say: Callable[[str], None]) -> dict[str, Any]:
        """Wait until the table and every index of it are ACTIVE; its description then."""
        waiting: set[str] = set()
        while True:
            description = self._describe(table)
            busy = {
                name for name, status in _index_statuses(description).items() if status != "ACTIVE"
            }
            if description["TableStatus"] == "ACTIVE" and not busy:
                return description
            for name in sorted(busy - waiting):
                say(
                    f"waiting until index {name} of {table} is ACTIVE: DynamoDB fills it from"
                    " the table's items, which takes a while on a large table"
                )
            waiting |= busy
            time.sleep(_POLL_SECONDS)

    # -- receipts, as the receiver writes them ---------------------------------------------

    def record_receipts(self, receipts: Sequence[Receipt]) -> int:
        """Insert RECEIVED items, conditional on their key being new; each transaction also
        counts the new receipts in their batches and in a counter shard."""
        first_of_key: dict[str, Receipt] = {}
        for receipt in receipts:
            first_of_key.setdefault(receipt.key, receipt)
        new = 0

        def record(pending: list[Receipt]) -> list[Receipt]:
            nonlocal new
            retry: list[Receipt] = []
            for chunk in _receipt_chunks(pending):
                codes = self._transact(self._record_ops(chunk))
                if codes is None:
                    new += len(chunk)
                    continue
                for receipt, code in zip(chunk, codes, strict=False):
                    if code != "ConditionalCheckFailed":  # that one: a known key
                        retry.append(receipt)
            return retry

        _in_rounds(list(first_of_key.values()), record, "record receipts")
        return new

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(keys))
        items = self._batch_get(self.tables.receipts, "key", wanted, projection=["key"])
        return {item["key"] for item in items}

    def receipts_for_instance(self, sop_instance_uid: str) -> list[Receipt]:
        items = self._query(self.tables.receipts, "by_instance", "g_sop", _gk(sop_instance_uid))
        items.sort(key=lambda item: (float(item["received_at"]), item["key"]))
        return [_receipt(item) for item in items]

    # -- receipt transitions ----------------------------------------------------------------

    def _mark_importing(
        self, keys: list[str], batch_id: str, retry: bool, at: float
    ) -> dict[str, Admission]:
        result: dict[str, Admission] = {}
        rows = self._get_receipts(keys)
        groups: dict[str, list[Item]] = defaultdict(list)
        for key in keys:
            if key in rows:
                groups[_instance(rows[key])].append(rows[key])
            else:
                result[key] = Admission.UNKNOWN
        instances = sorted(groups)
        locks = self._get_locks(rows.values())
        position = 0
        rounds = 0
        while position < len(instances):
            ops: list[dict[str, Any]] = []
            delta: Counter[str] = Counter()
            planned: dict[str, Admission] = {}
            end = position
            blocked = False
            while end < len(instances):
                group = sorted(
                    groups[instances[end]], key=lambda r: (float(r["received_at"]), r["key"])
                )
                decisions, group_ops, group_delta = self._plan_admission(
                    group, locks, batch_id, retry, at
                )
                if ops and len(ops) + len(group_ops) > _MAX_TRANSACT_ITEMS - 1:
                    break
                ops += group_ops
                delta.update(group_delta)
                planned.update(decisions)
                end += 1
                if Admission.BLOCKED in decisions.values():
                    blocked = True
                    break
            if ops and self._transact([*ops, *self._counter_ops(delta)]) is not None:
                # Someone else moved one of these receipts or locks: read them again, decide
                # again, from the same instance on.
                rounds += 1
                if rounds >= _MAX_ROUNDS:
                    raise TrackerError(f"could not admit receipts into {batch_id}: contention")
                _backoff(rounds)
                again = [r["key"] for name in instances[position:end] for r in groups[name]]
                fresh = self._get_receipts(again)
                for name in instances[position:end]:
                    groups[name] = [fresh[r["key"]] for r in groups[name] if r["key"] in fresh]
                locks.update(self._get_locks(fresh.values()))
                continue
            result.update(planned)
            position = end
            rounds = 0
            if blocked:
                for name in instances[position:]:
                    for row in groups[name]:
                        result[row["key"]] = Admission.WAITING
                break
        return result

    def _mark_imported_many(
        self, batch_id: str, results: Mapping[str, ImportedInstance], at: float
    ) -> set[str]:
        def plan(row: Item) -> tuple[bool, list[dict[str, Any]], Counter[str]]:
            if row.get("job_batch_id") != batch_id:
                return False, [], Counter()
            if row["state"] == State.IMPORTED:
                return True, [], Counter()  # a replay
            if row["state"] != State.IMPORTING:
                return False, [], Counter()
            outcome = results[row["key"]]
            ops = self._end_attempt_ops(
                row,
                State.IMPORTED,
                at,
                {
                    "image_set_id": outcome.image_set_id,
                    "is_primary": outcome.is_primary,
                    "image_set_version": outcome.image_set_version,
                },
                receipt={"reason": None, "g_state": None},
                lock={
                    "imported_key": row["key"],
                    "imported_received_at": float(row["received_at"]),
                },
            )
            return True, ops, Counter({State.IMPORTING.value: -1, State.IMPORTED.value: 1})

        return self._apply(list(results), plan, f"record the results of {batch_id}")

    def _mark_failed(
        self, keys: list[str], reason: str, batch_id: str | None, at: float
    ) -> set[str]:
        def plan(row: Item) -> tuple[bool, list[dict[str, Any]], Counter[str]]:
            state = row["state"]
            if batch_id is None:
                if state == State.FAILED and row.get("job_batch_id") is None:
                    return row.get("reason") == reason, [], Counter()  # a replay
                if state != State.RECEIVED:
                    return False, [], Counter()
                return True, self._fail_without_job_ops(row, reason, at), _moved(state)
            if row.get("job_batch_id") != batch_id:
                return False, [], Counter()
            if state == State.FAILED:
                return True, [], Counter()  # a replay
            if state != State.IMPORTING:
                return False, [], Counter()
            ops = self._end_attempt_ops(
                row,
                State.FAILED,
                at,
                {"reason": reason},
                receipt={"g_state": _state_key(State.FAILED, row["key"])},
                lock={},
            )
            return True, ops, _moved(State.IMPORTING)

        return self._apply(keys, plan, "record failures")

    def _record_cleanup(self, key: str, action: str, at: float, attempt: int | None) -> bool:
        for round_ in range(_MAX_ROUNDS):
            row = self._get(self.tables.receipts, {"key": key})
            if row is None or row["state"] not in _FINAL:
                return False
            newest = int(row["attempt"])
            if attempt not in (None, newest):
                return False
            if row.get("cleanup_action") is not None:
                return bool(row["cleanup_action"] == action)  # a replay
            ops = [
                self._update(
                    self.tables.receipts,
                    {"key": key},
                    set_={"cleanup_action": action, "cleanup_at": at},
                    remove=["g_cleanup", "cleanup_claimed_by", "cleanup_claim_expires_at"],
                    condition=(
                        "#c0 = :c0 AND #c1 = :c1 AND attribute_not_exists(#c2)",
                        {"#c0": "state", "#c1": "attempt", "#c2": "cleanup_action"},
                        {":c0": row["state"], ":c1": newest},
                    ),
                ),
                self._update(
                    self.tables.attempts,
                    {"key": key, "attempt": newest},
                    set_={"cleanup_action": action, "cleanup_at": at},
                    condition=("attribute_exists(#c0)", {"#c0": "key"}, {}),
                ),
            ]
            if self._transact(ops) is None:
                return True
            _backoff(round_)  # moved meanwhile: read again, decide again
        raise TrackerError(f"could not record the cleanup of {key}: contention")

    def _claim_cleanup(self, key: str, attempt: int, owner: str, until: float, at: float) -> bool:
        return self._conditional_update(
            self._update(
                self.tables.receipts,
                {"key": key},
                set_={"cleanup_claimed_by": owner, "cleanup_claim_expires_at": until},
                condition=(
                    "#c0 IN (:c0, :c1) AND #c1 = :c2 AND attribute_not_exists(#c2)"
                    " AND (attribute_not_exists(#c3) OR #c3 = :c3 OR #c4 < :c4)",
                    {
                        "#c0": "state",
                        "#c1": "attempt",
                        "#c2": "cleanup_action",
                        "#c3": "cleanup_claimed_by",
                        "#c4": "cleanup_claim_expires_at",
                    },
                    {
                        ":c0": State.IMPORTED.value,
                        ":c1": State.FAILED.value,
                        ":c2": int(attempt),
                        ":c3": owner,
                        ":c4": at,
                    },
                ),
            )
        )

    def _cleanup_due(
        self, state: State, cutoff: float | None, at: float, limit: int
    ) -> list[ReceiptStatus]:
        found: list[Item] = []
        for shard in range(STATE_SHARDS):
            request: dict[str, Any] = {
                "TableName": self.tables.receipts,
                "IndexName": "by_cleanup",
                "KeyConditionExpression": "g_cleanup = :g",
                "ExpressionAttributeValues": {":g": _av(f"{state.value}#{shard}")},
                "Limit": limit,
            }
            if cutoff is not None:
                request["KeyConditionExpression"] += " AND state_changed_at <= :t"
                request["ExpressionAttributeValues"][":t"] = _av(cutoff)
            # Each shard's oldest `limit` hold the oldest `limit` overall: one page each.
            found += [_item(raw) for raw in self._client.query(**request).get("Items", [])]
        due = [
            item
            for item in found
            if item["state"] in _FINAL
            and item.get("cleanup_action") is None
            and float(item.get("cleanup_claim_expires_at") or 0) < at
        ]
        due.sort(key=lambda item: (float(item["state_changed_at"]), item["key"]))
        return self._statuses(due[:limit])

    # -- receipt queries --------------------------------------------------------------------

    def receipt_status(self, key: str) -> ReceiptStatus | None:
        item = self._get(self.tables.receipts, {"key": key})
        return None if item is None else self._statuses([item])[0]

    def attempts(self, key: str) -> list[Attempt]:
        items = self._query_all(
            TableName=self.tables.attempts,
            KeyConditionExpression="#k = :k",
            ExpressionAttributeNames={"#k": "key"},
            ExpressionAttributeValues={":k": _av(key)},
            ConsistentRead=True,
        )
        job_ids = self._job_ids(item.get("batch_id") for item in items)
        items.sort(key=lambda item: int(item["attempt"]))
        return [_attempt(item, job_ids) for item in items]

    def receipts_in_batch(self, batch_id: str) -> list[ReceiptStatus]:
        items = self._query(self.tables.receipts, "by_batch", "g_batch", _gk(batch_id))
        items.sort(key=lambda item: item["key"])
        return self._statuses(items)

    def receipts_in_job(self, batch_id: str) -> list[ReceiptStatus]:
        items = self._query(self.tables.receipts, "by_job", "g_job", batch_id)
        items.sort(key=lambda item: item["key"])
        return self._statuses(items)

    def superseded(self, key: str) -> bool:
        row = self._get(self.tables.receipts, {"key": key})
        if row is None or not row["sop_instance_uid"]:
            return False
        lock = self._get(self.tables.instances, {"sop_instance_uid": row["sop_instance_uid"]})
        return lock is not None and _newer_imported(lock, row)

    def receipts_blocking(self, batch_id: str) -> list[ReceiptStatus]:
        mine = self._query(self.tables.receipts, "by_batch", "g_batch", _gk(batch_id))
        locks = self._get_locks(mine)
        holders = [
            lock["importing_key"]
            for lock in locks.values()
            if lock.get("importing_key") and lock.get("importing_batch") != batch_id
        ]
        rows = self._get_receipts(holders)
        blocking = [
            row
            for row in rows.values()
            if row["state"] == State.IMPORTING and row.get("job_batch_id") != batch_id
        ]
        blocking.sort(key=lambda row: (row["sop_instance_uid"], row["key"]))
        return self._statuses(blocking)

    def where(self, uid: str) -> list[ReceiptStatus]:
        matching: dict[str, Item] = {}
        for index, attribute in (
            ("by_instance", "g_sop"),
            ("by_series", "g_series"),
            ("by_study", "g_study"),
        ):
            for item in self._query(self.tables.receipts, index, attribute, _gk(uid)):
                matching[item["key"]] = item
        newest: dict[str, Item] = {}
        for item in matching.values():
            name = _instance(item)
            if name not in newest or _order(item) > _order(newest[name]):
                newest[name] = item
        items = sorted(
            newest.values(),
            key=lambda i: (
                i["study_instance_uid"],
                i["series_instance_uid"],
                i["sop_instance_uid"],
                i["key"],
            ),
        )
        return self._statuses(items)

    def failures(self) -> list[ReceiptStatus]:
        failed: list[Item] = []
        for shard in range(STATE_SHARDS):
            failed += self._query(
                self.tables.receipts, "by_state", "g_state", f"{State.FAILED.value}#{shard}"
            )
        newest: dict[str, Item] = {}
        for item in failed:
            name = _instance(item)
            if name in newest:
                continue
            if item["sop_instance_uid"]:
                receipts = self._query(
                    self.tables.receipts, "by_instance", "g_sop", _gk(item["sop_instance_uid"])
                )
                newest[name] = max(receipts, key=_order, default=item)
            else:
                newest[name] = item
        items = [item for item in newest.values() if item["state"] == State.FAILED]
        items.sort(key=lambda i: (float(i["received_at"]), i["key"]))
        return self._statuses(items)

    def counts_by_state(self) -> dict[str, int]:
        counts = {state.value: 0 for state in State}
        shards = self._batch_get(self.tables.counters, "shard", list(range(COUNTER_SHARDS)))
        for item in shards:
            for state in State:
                counts[state.value] += int(item.get(state.value, 0))
        return counts

    def _oldest_unimported_received_at(self) -> float | None:
        oldest: float | None = None
        for state in (State.RECEIVED, State.IMPORTING):
            for shard in range(STATE_SHARDS):
                response = self._client.query(
                    TableName=self.tables.receipts,
                    IndexName="by_state",
                    KeyConditionExpression="g_state = :s",
                    ExpressionAttributeValues={":s": _av(f"{state.value}#{shard}")},
                    ProjectionExpression="received_at",
                    Limit=1,
                )
                for raw in response.get("Items", []):
                    received_at = float(_item(raw)["received_at"])
                    oldest = received_at if oldest is None else min(oldest, received_at)
        return oldest

    # -- batches ----------------------------------------------------------------------------

    def _open_batch(
        self, batch_id: str, prefix: str, owner: str, lease_seconds: float, at: float
    ) -> bool:
        names = {f"#{name}": name for name in _BATCH_IF_NOT_EXISTS}
        names.update({"#state": "state", "#owner": "owner"})
        sets = [f"#{name} = if_not_exists(#{name}, :z_{name})" for name in _BATCH_IF_NOT_EXISTS]
        values: Item = {f":z_{name}": value for name, value in _BATCH_IF_NOT_EXISTS.items()}
        values[":z_opened_at"] = at
        values[":z_phase_at"] = at
        for name, value in {
            "prefix": prefix,
            "owner": owner,
            "state": BatchState.OPEN.value,
            "lease_seconds": float(lease_seconds),
            "lease_expires_at": at + lease_seconds,
            "g_phase": BatchState.OPEN.value,
            "g_owner": owner,
        }.items():
            names[f"#{name}"] = name
            sets.append(f"#{name} = :{name}")
            values[f":{name}"] = value
        values[":none"] = ""
        return self._conditionally(
            self._client.update_item,
            TableName=self.tables.batches,
            Key={"batch_id": _av(batch_id)},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression="attribute_not_exists(batch_id) OR (#state = :state"
            " AND (#owner = :owner OR #owner = :none))",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={k: _av(v) for k, v in values.items()},
        )

    def _renew_lease(self, owner: str, at: float) -> list[str]:
        renewed: list[str] = []
        for item in self._query(self.tables.batches, "by_owner", "g_owner", owner):
            if self._conditional_update(
                self._update(
                    self.tables.batches,
                    {"batch_id": item["batch_id"]},
                    set_={"lease_expires_at": at + float(item["lease_seconds"])},
                    condition=(
                        "#c0 = :c0 AND #c1 = :c1",
                        {"#c0": "state", "#c1": "owner"},
                        {":c0": BatchState.OPEN.value, ":c1": owner},
                    ),
                )
            ):
                renewed.append(item["batch_id"])
        return renewed

    def _record_associations(
        self, batch_id: str, owner: str, open_associations: int, last_end_at: float | None
    ) -> bool:
        set_: Item = {"open_associations": open_associations}
        if last_end_at is not None:
            set_["last_association_end_at"] = last_end_at
        return self._conditional_update(
            self._update(
                self.tables.batches,
                {"batch_id": batch_id},
                set_=set_,
                condition=(
                    "#c0 = :c0 AND #c1 = :c1",
                    {"#c0": "state", "#c1": "owner"},
                    {":c0": BatchState.OPEN.value, ":c1": owner},
                ),
            )
        )

    def _seal_batch(self, batch_id: str, by: str, at: float) -> bool:
        if self._conditional_update(
            self._update(
                self.tables.batches,
                {"batch_id": batch_id},
                set_={
                    "state": BatchState.SEALED.value,
                    "sealed_at": at,
                    "sealed_by": by,
                    "g_phase": BatchState.SEALED.value,
                    "phase_at": at,
                },
                remove=["g_owner"],
                condition=(
                    "#c0 = :c0 AND (#c1 = :c1 OR #c2 < :c2)",
                    {"#c0": "state", "#c1": "owner", "#c2": "lease_expires_at"},
                    {":c0": BatchState.OPEN.value, ":c1": by, ":c2": at},
                ),
            )
        ):
            return True
        item = self._get(self.tables.batches, {"batch_id": batch_id})
        return item is not None and item["state"] == BatchState.SEALED and item["sealed_by"] == by

    def batch(self, batch_id: str) -> Batch | None:
        item = self._get(self.tables.batches, {"batch_id": batch_id})
        return None if item is None else _batch(item)

    def open_batches(self) -> list[Batch]:
        items = self._query(self.tables.batches, "by_phase", "g_phase", BatchState.OPEN.value)
        batches = [_batch(item) for item in items if item["state"] == BatchState.OPEN]
        batches.sort(key=lambda b: (b.opened_at, b.batch_id))
        return batches

    def sealed_batches_without_job(self) -> list[Batch]:
        items = self._query(self.tables.batches, "by_phase", "g_phase", BatchState.SEALED.value)
        ids = [item["batch_id"] for item in items]
        with_job = {
            job["batch_id"]
            for job in self._batch_get(self.tables.jobs, "batch_id", ids, projection=["batch_id"])
        }
        batches: list[Batch] = []
        for item in items:
            if item["batch_id"] in with_job:
                self._leave_phase_index(item["batch_id"])  # a start that stopped half-way
            elif item["state"] == BatchState.SEALED:
                batches.append(_batch(item))
        batches.sort(key=lambda b: (b.sealed_at or 0.0, b.batch_id))
        return batches

    # -- jobs -------------------------------------------------------------------------------

    def _record_job_start(self, batch_id: str, client_token: str, job_name: str, at: float) -> bool:
        batch = self._get(self.tables.batches, {"batch_id": batch_id})
        if batch is None or batch["state"] != BatchState.SEALED:
            raise BatchNotSealedError(f"batch {batch_id} is not sealed")
        item: Item = {
            "batch_id": batch_id,
            "prefix": batch["prefix"],
            "client_token": client_token,
            "job_name": job_name,
            "status": JobStatus.STARTING.value,
            "message": "",
            "counts": {},
            "created_at": at,
            "updated_at": at,
            "g_unfinished": _UNFINISHED,
        }
        won = self._conditionally(
            self._client.put_item,
            TableName=self.tables.jobs,
            Item=_avs(item),
            ConditionExpression="attribute_not_exists(batch_id)",
        )
        self._leave_phase_index(batch_id)
        return won

    def _set_job_id(self, batch_id: str, job_id: str, submitted_at: float) -> bool:
        if self._conditional_update(
            self._update(
                self.tables.jobs,
                {"batch_id": batch_id},
                set_={
                    "job_id": job_id,
                    "status": JobStatus.SUBMITTED.value,
                    "submitted_at": submitted_at,
                    "updated_at": time.time(),
                },
                condition=(
                    "attribute_exists(#c0) AND attribute_not_exists(#c1) AND #c2 = :c2",
                    {"#c0": "batch_id", "#c1": "job_id", "#c2": "status"},
                    {":c2": JobStatus.STARTING.value},
                ),
            )
        ):
            return True
        job = self._get(self.tables.jobs, {"batch_id": batch_id})
        return job is not None and job.get("job_id") == job_id

    def _update_job(
        self, batch_id: str, changes: Mapping[str, Any], allowed: Sequence[str] | None
    ) -> bool:
        expression = "attribute_exists(#c0)"
        names = {"#c0": "batch_id"}
        values: Item = {}
        if allowed is not None:
            placeholders = [f":s{i}" for i in range(len(allowed))]
            expression += f" AND #c1 IN ({', '.join(placeholders)})"
            names["#c1"] = "status"
            values.update(zip(placeholders, allowed, strict=True))
        return self._conditional_update(
            self._update(
                self.tables.jobs,
                {"batch_id": batch_id},
                set_=changes,
                # Results recorded: the job leaves the `by_unfinished` index.
                remove=["g_unfinished"] if "results_at" in changes else [],
                condition=(expression, names, values),
            )
        )

    def job(self, job_id: str) -> Job | None:
        for item in self._query(self.tables.jobs, "by_job_id", "job_id", job_id):
            return self.batch_job(item["batch_id"])
        return None

    def batch_job(self, batch_id: str) -> Job | None:
        item = self._get(self.tables.jobs, {"batch_id": batch_id})
        return None if item is None else _job(item)

    def jobs(self, status: JobStatus | None = None) -> list[Job]:
        if status is None:
            items = self._query_all(TableName=self.tables.jobs, _operation="scan")
        else:
            items = self._query(self.tables.jobs, "by_status", "status", JobStatus(status).value)
        jobs = [_job(item) for item in items]
        jobs.sort(key=lambda j: (j.created_at, j.batch_id))
        return jobs

    def unfinished_jobs(self) -> list[Job]:
        found = self._query(self.tables.jobs, "by_unfinished", "g_unfinished", _UNFINISHED)
        items = self._batch_get(self.tables.jobs, "batch_id", [i["batch_id"] for i in found])
        jobs = [_job(item) for item in items if item.get("results_at") is None]
        jobs.sort(key=lambda j: (j.created_at, j.batch_id))
        return jobs

    def close(self) -> None:
        """Nothing to release: the boto3 client holds no session state of its own."""

    def __enter__(self) -> DynamoDbTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transitions: plans and transactions -------------------------------------------------

    def _record_ops(self, chunk: Sequence[Receipt]) -> list[dict[str, Any]]:
        now = time.time()
        ops: list[dict[str, Any]] = []
        per_batch: dict[str, list[Receipt]] = defaultdict(list)
        for r in chunk:
            item: Item = {f.name: getattr(r, f.name) for f in fields(Receipt)}
            item.update(
                state=State.RECEIVED.value,
                state_changed_at=now,
                attempt=0,
                g_sop=_gk(r.sop_instance_uid),
                g_series=_gk(r.series_instance_uid),
                g_study=_gk(r.study_instance_uid),
                g_batch=_gk(r.batch_id),
                g_state=_state_key(State.RECEIVED, r.key),
            )
            ops.append(
                {
                    "Put": {
                        "TableName": self.tables.receipts,
                        "Item": _avs(item),
                        "ConditionExpression": "attribute_not_exists(#k)",
                        "ExpressionAttributeNames": {"#k": "key"},
                    }
                }
            )
            if r.batch_id:
                per_batch[r.batch_id].append(r)
        existing = {
            item["batch_id"]: item
            for item in self._batch_get(self.tables.batches, "batch_id", list(per_batch))
        }
        for batch_id, members in per_batch.items():
            first = min(r.received_at for r in members)
            last = max(r.received_at for r in members)
            files = len(members)
            size = sum(r.size for r in members)
            current = existing.get(batch_id)
            if current is None:
                # Seen only through its receipts: OPEN, unowned, lease expired.
                batch: Item = {
                    "batch_id": batch_id,
                    "prefix": f"{batch_id}/",
                    "owner": "",
                    "state": BatchState.OPEN.value,
                    "lease_seconds": 0.0,
                    "lease_expires_at": 0.0,
                    "opened_at": first,
                    "files": files,
                    "bytes": size,
                    "first_receipt_at": first,
                    "last_receipt_at": last,
                    "open_associations": 0,
                    "g_phase": BatchState.OPEN.value,
                    "phase_at": first,
                }
                ops.append(
                    {
                        "Put": {
                            "TableName": self.tables.batches,
                            "Item": _avs(batch),
                            "ConditionExpression": "attribute_not_exists(batch_id)",
                        }
                    }
                )
                continue
            # Counts add up; first/last only move outwards, guarded by the values read.
            names = {"#f": "files", "#b": "bytes"}
            values: Item = {":f": files, ":b": size}
            sets: list[str] = []
            conditions = ["attribute_exists(batch_id)"]
            for attribute, value, better in (
                ("first_receipt_at", first, lambda new, old: new < old),
                ("last_receipt_at", last, lambda new, old: new > old),
            ):
                old = current.get(attribute)
                if old is not None and not better(value, float(old)):
                    continue
                alias = f"#{attribute[:1]}r"
                names[alias] = attribute
                values[f":{attribute}"] = value
                sets.append(f"{alias} = :{attribute}")
                if old is None:
                    conditions.append(f"attribute_not_exists({alias})")
                else:
                    values[f":old_{attribute}"] = float(old)
                    conditions.append(f"{alias} = :old_{attribute}")
            expression = "ADD #f :f, #b :b"
            if sets:
                expression = f"SET {', '.join(sets)} {expression}"
            ops.append(
                {
                    "Update": {
                        "TableName": self.tables.batches,
                        "Key": {"batch_id": _av(batch_id)},
                        "UpdateExpression": expression,
                        "ConditionExpression": " AND ".join(conditions),
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": {k: _av(v) for k, v in values.items()},
                    }
                }
            )
        ops += self._counter_ops(Counter({State.RECEIVED.value: len(chunk)}))
        return ops

    def _plan_admission(
        self,
        group: Sequence[Item],
        locks: Mapping[str, Item],
        batch_id: str,
        retry: bool,
        at: float,
    ) -> tuple[dict[str, Admission], list[dict[str, Any]], Counter[str]]:
        """Decide on the receipts of one instance (oldest first) without writing anything."""
        *older, newest = group
        lock = locks.get(newest["sop_instance_uid"]) if newest["sop_instance_uid"] else None
        decisions: dict[str, Admission] = {}
        admission, ops, delta = self._plan_admit(newest, lock, batch_id, retry, at)
        decisions[newest["key"]] = admission
        for row in older:
            if admission is Admission.BLOCKED:
                decisions[row["key"]] = Admission.WAITING
                continue
            # Two receipts of one instance in one call: only the newest may be imported.
            older_admission, older_ops, older_delta = self._plan_supersede(row, retry, at)
            decisions[row["key"]] = older_admission
            ops += older_ops
            delta.update(older_delta)
        return decisions, ops, delta

    def _plan_admit(
        self, row: Item, lock: Item | None, batch_id: str, retry: bool, at: float
    ) -> tuple[Admission, list[dict[str, Any]], Counter[str]]:
        state = row["state"]
        decided = admission_by_state(
            state, row.get("job_batch_id"), row.get("reason"), batch_id, retry
        )
        if decided is not None:
            return decided, [], Counter()
        if lock is not None:
            if _newer_imported(lock, row):
                return self._plan_supersede(row, retry, at)
            holder = lock.get("importing_key")
            if holder and holder != row["key"]:
                return Admission.BLOCKED, [], Counter()
        ops = self._new_attempt_ops(
            row,
            at,
            receipt={
                "state": State.IMPORTING.value,
                "job_batch_id": batch_id,
                "g_job": batch_id,
                "g_state": _state_key(State.IMPORTING, row["key"]),
                "reason": None,
                "g_cleanup": None,
            },
            attempt={"batch_id": batch_id},
        )
        sop = row["sop_instance_uid"]
        if sop:
            t = float(row["received_at"])
            ops.append(
                self._update(
                    self.tables.instances,
                    {"sop_instance_uid": sop},
                    set_={"importing_key": row["key"], "importing_batch": batch_id},
                    condition=(
                        "(attribute_not_exists(#c0) OR #c0 = :c0) AND (attribute_not_exists(#c1)"
                        " OR #c2 < :c2 OR (#c2 = :c2 AND #c1 < :c0))",
                        {
                            "#c0": "importing_key",
                            "#c1": "imported_key",
                            "#c2": "imported_received_at",
                        },
                        {":c0": row["key"], ":c2": t},
                    ),
                )
            )
        delta = Counter({state: -1, State.IMPORTING.value: 1})
        return Admission.ACCEPTED, ops, delta

    def _plan_supersede(
        self, row: Item, retry: bool, at: float
    ) -> tuple[Admission, list[dict[str, Any]], Counter[str]]:
        if is_superseded(row["state"], row.get("job_batch_id"), row.get("reason")):
            return Admission.SUPERSEDED, [], Counter()
        state = row["state"]
        if state == State.RECEIVED or (state == State.FAILED and retry):
            ops = self._fail_without_job_ops(row, SUPERSEDED_REASON, at)
            return Admission.SUPERSEDED, ops, _moved(state)
        return Admission.FINAL, [], Counter()

    def _fail_without_job_ops(self, row: Item, reason: str, at: float) -> list[dict[str, Any]]:
        return self._new_attempt_ops(
            row,
            at,
            receipt={
                "state": State.FAILED.value,
                "reason": reason,
                "g_state": _state_key(State.FAILED, row["key"]),
                "g_cleanup": _state_key(State.FAILED, row["key"]),
                "job_batch_id": None,
                "g_job": None,
            },
            attempt={"ended_at": at, "outcome": State.FAILED.value, "reason": reason},
        )

    def _new_attempt_ops(
        self, row: Item, at: float, *, receipt: Item, attempt: Item
    ) -> list[dict[str, Any]]:
        """Start the receipt's next attempt, from the state and attempt it was read in:
        `receipt` on the receipt (None removes), which loses the outcome before; and the new
        attempt's item, with `attempt`."""
        number = int(row["attempt"]) + 1
        item = {"key": row["key"], "attempt": number, "started_at": at, **attempt}
        return [
            self._update(
                self.tables.receipts,
                {"key": row["key"]},
                set_={**_NO_OUTCOME, "state_changed_at": at, "attempt": number, **receipt},
                condition=_unchanged(row),
            ),
            {
                "Put": {
                    "TableName": self.tables.attempts,
                    "Item": _avs(item),
                    "ConditionExpression": "attribute_not_exists(#k)",
                    "ExpressionAttributeNames": {"#k": "key"},
                }
            },
        ]

    def _end_attempt_ops(
        self, row: Item, outcome: State, at: float, fields: Item, *, receipt: Item, lock: Item
    ) -> list[dict[str, Any]]:
        """End the receipt's import attempt in its job with `outcome`: `fields` on the receipt
        and its attempt, `receipt` on the receipt alone (None removes), and release the lock
        of its instance (setting `lock` there)."""
        key = row["key"]
        ops = [
            self._update(
                self.tables.receipts,
                {"key": key},
                set_={
                    "state": outcome.value,
                    "state_changed_at": at,
                    "g_cleanup": _state_key(outcome, key),
                    **fields,
                    **receipt,
                },
                condition=_in_attempt(row),
            ),
            self._update(
                self.tables.attempts,
                {"key": key, "attempt": int(row["attempt"])},
                set_={"ended_at": at, "outcome": outcome.value, **fields},
                condition=("attribute_exists(#c0)", {"#c0": "key"}, {}),
            ),
        ]
        if row["sop_instance_uid"]:
            ops.append(
                self._update(
                    self.tables.instances,
                    {"sop_instance_uid": row["sop_instance_uid"]},
                    set_=lock,
                    remove=["importing_key", "importing_batch"],
                    condition=("#c0 = :c0", {"#c0": "importing_key"}, {":c0": key}),
                )
            )
        return ops

    def _apply(self, keys: list[str], plan: _Plan, what: str) -> set[str]:
        """Read, decide (`plan(row) -> (ok, ops, counter delta)`) and write, in transactions
        of whole receipts; a cancelled transaction's receipts are read and decided again."""
        done: set[str] = set()

        def write(pending: list[str]) -> list[str]:
            rows = self._get_receipts(pending)
            chunks: list[tuple[list[str], list[dict[str, Any]], Counter[str]]] = []
            for key in pending:
                row = rows.get(key)
                if row is None:
                    continue
                ok, ops, change = plan(row)
                if not ok:
                    continue
                if not ops:
                    done.add(key)
                    continue
                if not chunks or len(chunks[-1][1]) + len(ops) > _MAX_TRANSACT_ITEMS - 1:
                    chunks.append(([], [], Counter()))
                chunk_keys, chunk_ops, delta = chunks[-1]
                chunk_keys.append(key)
                chunk_ops.extend(ops)
                delta.update(change)
            retry: list[str] = []
            for chunk_keys, chunk_ops, delta in chunks:
                if self._transact([*chunk_ops, *self._counter_ops(delta)]) is None:
                    done.update(chunk_keys)
                else:
                    retry.extend(chunk_keys)
            return retry

        _in_rounds(keys, write, what)
        return done

    def _counter_ops(self, delta: Mapping[str, int]) -> list[dict[str, Any]]:
        changes = {state: n for state, n in delta.items() if n}
        if not changes:
            return []
        names = {f"#n{i}": state for i, state in enumerate(changes)}
        values = {f":n{i}": _av(n) for i, n in enumerate(changes.values())}
        return [
            {
                "Update": {
                    "TableName": self.tables.counters,
                    "Key": {"shard": _av(random.randrange(COUNTER_SHARDS))},
                    "UpdateExpression": "ADD "
                    + ", ".join(f"#n{i} :n{i}" for i in range(len(changes))),
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
        ]

    def _update(
        self,
        table: str,
        key: Item,
        *,
        set_: Mapping[str, Any] | None = None,
        remove: Sequence[str] = (),
        condition: tuple[str, dict[str, str], Item] | None = None,
    ) -> dict[str, Any]:
        """An Update of a TransactWriteItems (also used, unwrapped, by UpdateItem)."""
        names: dict[str, str] = {}
        values: Item = {}
        parts: list[str] = []
        assignments: list[str] = []
        removals: list[str] = []
        for i, (name, value) in enumerate((set_ or {}).items()):
            names[f"#u{i}"] = name
            if value is None:
                removals.append(f"#u{i}")
            else:
                values[f":u{i}"] = value
                assignments.append(f"#u{i} = :u{i}")
        for i, name in enumerate(remove):
            names[f"#r{i}"] = name
            removals.append(f"#r{i}")
        if assignments:
            parts.append("SET " + ", ".join(assignments))
        if removals:
            parts.append("REMOVE " + ", ".join(removals))
        update: dict[str, Any] = {
            "TableName": table,
            "Key": _avs(key),
            "UpdateExpression": " ".join(parts),
            "ExpressionAttributeNames": names,
        }
        if condition is not None:
            expression, condition_names, condition_values = condition
            update["ConditionExpression"] = expression
            names.update(condition_names)
            values.update(condition_values)
        if values:
            update["ExpressionAttributeValues"] = {k: _av(v) for k, v in values.items()}
        return {"Update": update}

    def _conditional_update(self, op: dict[str, Any]) -> bool:
        """An Update of `_update` run alone (UpdateItem); False if its condition failed, or
        its key is empty (DynamoDB refuses one: there is no such item)."""
        update = op["Update"]
        if _av("") in update["Key"].values():
            return False
        return self._conditionally(self._client.update_item, **update)

    def _conditionally(self, write: Callable[..., Any], **request: Any) -> bool:
        """One conditional write (PutItem, UpdateItem); False if its condition failed."""
        try:
            write(**request)
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _transact(self, ops: list[dict[str, Any]]) -> list[str] | None:
        """Run one transaction: None if it committed, else one cancellation code per item."""
        if not ops:
            return None
        try:
            self._client.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            code = _code(exc)
            if code == "TransactionCanceledException":
                reasons = exc.response.get("CancellationReasons") or []
                codes = [str(reason.get("Code") or "None") for reason in reasons]
                return codes + ["Unknown"] * (len(ops) - len(codes))
            if code in {"TransactionConflictException", "TransactionInProgressException"}:
                return ["TransactionConflict"] * len(ops)
            raise
        return None

    def _leave_phase_index(self, batch_id: str) -> None:
        """A batch with a job record leaves the `by_phase` index (idempotent)."""
        self._conditional_update(
            self._update(
                self.tables.batches,
                {"batch_id": batch_id},
                remove=["g_phase"],
                condition=("#c0 = :c0", {"#c0": "state"}, {":c0": BatchState.SEALED.value}),
            )
        )

    # -- reads ------------------------------------------------------------------------------

    def _get(self, table: str, key: Item) -> Item | None:
        if "" in key.values():
            return None  # DynamoDB refuses an empty key: no such item
        response = self._client.get_item(TableName=table, Key=_avs(key), ConsistentRead=True)
        raw = response.get("Item")
        return None if raw is None else _item(raw)

    def _get_receipts(self, keys: Iterable[str]) -> dict[str, Item]:
        return {
            item["key"]: item for item in self._batch_get(self.tables.receipts, "key", list(keys))
        }

    def _get_locks(self, rows: Iterable[Item]) -> dict[str, Item]:
        sops = sorted({row["sop_instance_uid"] for row in rows if row["sop_instance_uid"]})
        return {
            item["sop_instance_uid"]: item
            for item in self._batch_get(self.tables.instances, "sop_instance_uid", sops)
        }

    def _batch_get(
        self,
        table: str,
        key_name: str,
        keys: Sequence[Any],
        *,
        projection: Sequence[str] | None = None,
    ) -> list[Item]:
        """Strongly consistent BatchGetItem of many single-attribute keys."""
        keys = [k for k in keys if k != ""]
        found: list[Item] = []
        for start in range(0, len(keys), _BATCH_GET):
            request: dict[str, Any] = {
                "Keys": [{key_name: _av(k)} for k in keys[start : start + _BATCH_GET]],
                "ConsistentRead": True,
            }
            if projection:
                request["ProjectionExpression"] = ", ".join(
                    f"#p{i}" for i in range(len(projection))
                )
                request["ExpressionAttributeNames"] = {
                    f"#p{i}": name for i, name in enumerate(projection)
                }
            unprocessed: dict[str, Any] = {table: request}
            for round_ in range(_MAX_ROUNDS * 2):
                response = self._client.batch_get_item(RequestItems=unprocessed)
                found.extend(_item(raw) for raw in response.get("Responses", {}).get(table, []))
                unprocessed = response.get("UnprocessedKeys") or {}
                if not unprocessed:
                    break
                _backoff(round_)
            else:
                raise TrackerError(f"could not read {table}: throttled")
        return found

    def _query(self, table: str, index: str, attribute: str, value: str) -> list[Item]:
        if not value:
            return []
        return self._query_all(
            TableName=table,
            IndexName=index,
            KeyConditionExpression="#a = :v",
            ExpressionAttributeNames={"#a": attribute},
            ExpressionAttributeValues={":v": _av(value)},
        )

    def _query_all(self, *, _operation: str = "query", **request: Any) -> list[Item]:
        return list(self._items(_operation, **request))

    def _items(self, operation: str, **request: Any) -> Iterator[Item]:
        """The items of a Query or Scan, page after page."""
        call = self._client.query if operation == "query" else self._client.scan
        while True:
            response = call(**request)
            yield from (_item(raw) for raw in response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def _job_ids(self, batch_ids: Iterable[str | None]) -> dict[str, str]:
        wanted = sorted({b for b in batch_ids if b})
        jobs = self._batch_get(
            self.tables.jobs, "batch_id", wanted, projection=["batch_id", "job_id"]
        )
        return {job["batch_id"]: job["job_id"] for job in jobs if job.get("job_id")}

    def _statuses(self, items: Sequence[Item]) -> list[ReceiptStatus]:
        job_ids = self._job_ids(item.get("job_batch_id") for item in items)
        return [_status(item, job_ids) for item in items]


def table_definitions(tables: TableNames) -> list[dict[str, Any]]:
    """CreateTable arguments (but the billing mode) of the six tables, with every index."""
    t = tables

    def gsi(name: str, hash_key: str, range_key: str | None = None) -> dict[str, Any]:
        schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        if range_key:
            schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
        return {"IndexName": name, "KeySchema": schema, "Projection": {"ProjectionType": "ALL"}}

    return [
        {
            "TableName": t.receipts,
            "KeySchema": [{"AttributeName": "key", "KeyType": "HASH"}],
            "AttributeDefinitions": _attributes(
                key="S",
                g_sop="S",
                g_series="S",
                g_study="S",
                g_batch="S",
                g_state="S",
                g_job="S",
                g_cleanup="S",
                received_at="N",
                state_changed_at="N",
            ),
            "GlobalSecondaryIndexes": [
                gsi("by_instance", "g_sop", "received_at"),
                gsi("by_series", "g_series", "received_at"),
                gsi("by_study", "g_study", "received_at"),
                gsi("by_batch", "g_batch", "key"),
                gsi("by_state", "g_state", "received_at"),
                gsi("by_job", "g_job", "key"),
                gsi("by_cleanup", "g_cleanup", "state_changed_at"),
            ],
        },
        {
            "TableName": t.attempts,
            "KeySchema": [
                {"AttributeName": "key", "KeyType": "HASH"},
                {"AttributeName": "attempt", "KeyType": "RANGE"},
            ],
            "AttributeDefinitions": _attributes(key="S", attempt="N"),
        },
        {
            "TableName": t.instances,
            "KeySchema": [{"AttributeName": "sop_instance_uid", "KeyType": "HASH"}],
            "AttributeDefinitions": _attributes(sop_instance_uid="S"),
        },
        {
            "TableName": t.batches,
            "KeySchema": [{"AttributeName": "batch_id", "KeyType": "HASH"}],
            "AttributeDefinitions": _attributes(
                batch_id="S", g_phase="S", phase_at="N", g_owner="S"
            ),
            "GlobalSecondaryIndexes": [
                gsi("by_phase", "g_phase", "phase_at"),
                gsi("by_owner", "g_owner", "batch_id"),
            ],
        },
        {
            "TableName": t.jobs,
            "KeySchema": [{"AttributeName": "batch_id", "KeyType": "HASH"}],
            "AttributeDefinitions": _attributes(
                batch_id="S", job_id="S", status="S", created_at="N", g_unfinished="S"
            ),
            "GlobalSecondaryIndexes": [
                gsi("by_job_id", "job_id"),
                gsi("by_status", "status", "created_at"),
                gsi("by_unfinished", "g_unfinished", "created_at"),
            ],
        },
        {
            "TableName": t.counters,
            "KeySchema": [{"AttributeName": "shard", "KeyType": "HASH"}],
            "AttributeDefinitions": _attributes(shard="N"),
        },
    ]


@dataclass(frozen=True, slots=True)
class _Backfill:
    """Index attributes that items written by an older version lack: `gaps(item)` answers
    them from the attributes `reads` (the table's key first), {} when there are none."""

    table: str  # a TableNames field
    reads: tuple[str, ...]
    gaps: Callable[[Item], Item]


def _receipt_gaps(item: Item) -> Item:
    """`g_job` and `g_cleanup` (indexes `by_job`, `by_cleanup`), as the transitions set them."""
    gaps: Item = {}
    if item.get("job_batch_id") and "g_job" not in item:
        gaps["g_job"] = item["job_batch_id"]
    state = item.get("state")
    if state in _FINAL and item.get("cleanup_action") is None and "g_cleanup" not in item:
        gaps["g_cleanup"] = _state_key(State(state), item["key"])
    return gaps


def _job_gaps(item: Item) -> Item:
    """`g_unfinished` (index `by_unfinished`) until the job's results are recorded."""
    if item.get("results_at") is None and "g_unfinished" not in item:
        return {"g_unfinished": _UNFINISHED}
    return {}


#: The sparse index attributes added after the first version, filled in by `create_tables`.
_BACKFILLS = (
    _Backfill(
        "receipts",
        ("key", "state", "job_batch_id", "cleanup_action", "g_job", "g_cleanup"),
        _receipt_gaps,
    ),
    _Backfill("jobs", ("batch_id", "results_at", "g_unfinished"), _job_gaps),
)


def _index_statuses(description: Mapping[str, Any]) -> dict[str, str]:
    """IndexStatus by index name, from a DescribeTable answer."""
    return {
        gsi["IndexName"]: str(gsi.get("IndexStatus", "ACTIVE"))
        for gsi in description.get("GlobalSecondaryIndexes") or []
    }


# -- items -----------------------------------------------------------------------------------

#: Batch attributes that open_batch sets only when the item is new.
_BATCH_IF_NOT_EXISTS: dict[str, Any] = {
    "opened_at": 0.0,
    "files": 0,
    "bytes": 0,
    "open_associations": 0,
    "phase_at": 0.0,
}


def _attributes(**types: str) -> list[dict[str, str]]:
    return [{"AttributeName": name, "AttributeType": kind} for name, kind in types.items()]


def _gk(value: str) -> str:
    """An index key value: DynamoDB refuses "" there."""
    return value or _EMPTY_KEY


def _state_key(state: State, key: str) -> str:
    return f"{state.value}#{zlib.crc32(key.encode()) % STATE_SHARDS}"


def _instance(row: Item) -> str:
    """Receipts of one instance share this; a receipt without a SOP UID is its own."""
    return row["sop_instance_uid"] or f"\x00{row['key']}"


def _order(row: Item) -> tuple[float, str]:
    return float(row["received_at"]), row["key"]


def _newer_imported(lock: Item, row: Item) -> bool:
    if not lock.get("imported_key"):
        return False
    return (float(lock["imported_received_at"]), lock["imported_key"]) > _order(row)


def _moved(old: str) -> Counter[str]:
    return Counter({old: -1, State.FAILED.value: 1}) if old != State.FAILED else Counter()


def _unchanged(row: Item) -> tuple[str, dict[str, str], Item]:
    """The receipt is still in the state and attempt it was read in."""
    return (
        "#c0 = :c0 AND #c1 = :c1",
        {"#c0": "state", "#c1": "attempt"},
        {":c0": row["state"], ":c1": int(row["attempt"])},
    )


def _in_attempt(row: Item) -> tuple[str, dict[str, str], Item]:
    """The receipt is still IMPORTING in the job and attempt it was read in."""
    return (
        "#c0 = :c0 AND #c1 = :c1 AND #c2 = :c2",
        {"#c0": "state", "#c1": "attempt", "#c2": "job_batch_id"},
        {":c0": State.IMPORTING.value, ":c1": int(row["attempt"]), ":c2": row["job_batch_id"]},
    )


def _receipt_chunks(receipts: Sequence[Receipt]) -> Iterator[list[Receipt]]:
    """Receipts per transaction: one Put each, one item per batch, one counter."""
    chunk: list[Receipt] = []
    batches: set[str] = set()
    for receipt in receipts:
        new_batch = 1 if receipt.batch_id and receipt.batch_id not in batches else 0
        if chunk and len(chunk) + len(batches) + new_batch + 1 >= _MAX_TRANSACT_ITEMS:
            yield chunk
            chunk, batches = [], set()
        chunk.append(receipt)
        if receipt.batch_id:
            batches.add(receipt.batch_id)
    if chunk:
        yield chunk


def _av(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        return {"N": format(Decimal(repr(value)), "f")}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): _av(v) for k, v in value.items()}}
    raise TypeError(f"no DynamoDB type for {type(value).__name__}")


def _avs(item: Mapping[str, Any]) -> AttributeValues:
    """An item as attribute values; None values are left out."""
    return {name: _av(value) for name, value in item.items() if value is not None}


def _py(value: Mapping[str, Any]) -> Any:
    ((kind, raw),) = value.items()
    if kind == "S":
        return raw
    if kind == "N":
        return int(raw) if raw.lstrip("-").isdigit() else float(raw)
    if kind == "BOOL":
        return bool(raw)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _py(v) for k, v in raw.items()}
    raise TypeError(f"unexpected DynamoDB type {kind}")


def _item(raw: Mapping[str, Any]) -> Item:
    return {name: _py(value) for name, value in raw.items()}


_FLOATS = {
    "received_at",
    "state_changed_at",
    "cleanup_at",
    "started_at",
    "ended_at",
    "lease_seconds",
    "lease_expires_at",
    "opened_at",
    "sealed_at",
    "first_receipt_at",
    "last_receipt_at",
    "last_association_end_at",
    "created_at",
    "submitted_at",
    "updated_at",
    "results_at",
    "cleaned_at",
    "cleanup_claim_expires_at",
}


def _fields(cls: type, item: Item, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = overrides[f.name] if f.name in overrides else item.get(f.name)
        if value is not None and f.name in _FLOATS:
            value = float(value)
        values[f.name] = value
    return values


def _receipt(item: Item) -> Receipt:
    return Receipt(**_fields(Receipt, item, size=int(item["size"])))


def _status(item: Item, job_ids: Mapping[str, str]) -> ReceiptStatus:
    job_batch = item.get("job_batch_id")
    return ReceiptStatus(
        **_fields(
            ReceiptStatus,
            item,
            size=int(item["size"]),
            state=State(item["state"]),
            attempt=int(item.get("attempt", 0)),
            job_id=job_ids.get(job_batch) if job_batch else None,
        )
    )


def _attempt(item: Item, job_ids: Mapping[str, str]) -> Attempt:
    batch_id = item.get("batch_id")
    outcome = item.get("outcome")
    return Attempt(
        **_fields(
            Attempt,
            item,
            attempt=int(item["attempt"]),
            outcome=None if outcome is None else State(outcome),
            job_id=job_ids.get(batch_id) if batch_id else None,
        )
    )


def _batch(item: Item) -> Batch:
    return Batch(
        **_fields(
            Batch,
            item,
            state=BatchState(item["state"]),
            files=int(item.get("files", 0)),
            bytes=int(item.get("bytes", 0)),
            open_associations=int(item.get("open_associations", 0)),
        )
    )


def _job(item: Item) -> Job:
    return Job(
        **_fields(
            Job,
            item,
            status=JobStatus(item["status"]),
            message=item.get("message", ""),
            counts={str(k): int(v) for k, v in (item.get("counts") or {}).items()},
        )
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _in_rounds(pending: list[_T], step: Callable[[list[_T]], list[_T]], what: str) -> None:
    """Call `step` on what is pending (it returns the receipts to try again: their
    transaction was cancelled) until nothing is, with a backoff between rounds; TrackerError
    after `_MAX_ROUNDS`."""
    for round_ in range(_MAX_ROUNDS):
        if not pending:
            return
        pending = step(pending)
        if pending:
            _backoff(round_)
    if pending:
        raise TrackerError(f"could not {what}: contention on {len(pending)} receipts")


def _backoff(round_: int) -> None:
    """Full jitter, from 10 ms doubling up to 1 s."""
    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**round_)))
