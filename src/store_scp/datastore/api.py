"""AWS HealthImaging's HTTP API, served by the embedded datastore.

`make_app(datastore)` builds an aiohttp application that speaks the REST paths, methods, headers
and JSON of botocore's `medical-imaging` service model (`botocore/data/medical-imaging/
2023-07-19/service-2.json`, protocol rest-json): one route per operation of the model, taken
from its `requestUri` template and HTTP method. So `boto3.client("medical-imaging",
endpoint_url=...)` works against it. botocore prefixes the host with `runtime-` for the
image-set operations: clients of a local endpoint pass `Config(inject_host_prefix=False)`.

The API is not a mirror that only agrees with itself:

- every request is parsed by its operation's input shape (uri, querystring, header, payload and
  body members), checked by botocore's own `ParamValidator` and then by the constraints that
  botocore leaves to the service (maximum lengths and values, `pattern`, `enum`, unions);
  a request that fails answers ValidationException (400);
- every response is checked against the operation's output shape before it is sent; every
  error is one of the operation's declared error shapes (anything else becomes
  InternalServerException), with its HTTP status from the model, an `x-amzn-ErrorType` header
  and a JSON body `{"message": ...}` checked against the error shape. botocore parses these into
  `client.exceptions.ThrottlingException` and the others.

One documented relaxation: the `S3Uri` shape (StartDICOMImportJob's `inputS3Uri` and
`outputS3Uri`) also accepts `file:///...` URIs, since the embedded datastore imports from a
local object store. Operations the local datastore does not implement (data store creation and
deletion, tagging, image set copy, update and delete) answer AccessDeniedException (403).
Unknown paths answer 404 with `x-amzn-ErrorType: UnknownOperationException` (no operation,
hence no model to check against).

Responses: timestamps are epoch seconds (rest-json's default); GetImageSetMetadata returns the
gzip-compressed JSON with `Content-Type: application/json` and `Content-Encoding: gzip`, as the
service does (clients decompress it themselves); GetImageFrame returns the stored frame with the
content type of its stored transfer syntax (`image/jph` for HTJ2K, `application/octet-stream`
for native little-endian pixels, ...).

The API returns patient data: bind it to 127.0.0.1 (the default) unless something in front of it
authenticates callers. It does not check SigV4 signatures.

Test hooks: `make_app(..., test_hooks=True)` adds `POST /_store-scp/test-hooks` taking
`{"hook": NAME, "args": {...}}` for the LocalDatastore test hooks (`inject_errors`,
`throttle_next_starts`, `fail_next_jobs`, `delay_next_manifests`, `stall_next_jobs`,
`fail_files`, `hold_jobs`, `clear_faults`), so that tests can inject faults into a datastore
served by another process. Never enable it in production.

Run it alone: `python -m store_scp.datastore.api --root DIR [--port N] [--s3-endpoint-url URL]
[--test-hooks]` prints `listening on http://127.0.0.1:PORT` and serves until SIGTERM or SIGINT.
With `--s3-endpoint-url` it stands in for HealthImaging in front of any S3 endpoint: jobs read
`s3://` input and write `s3://` outputs there with boto3.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import logging
import re
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.session
from aiohttp import web
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.validate import ParamValidator

from store_scp.datastore.base import DatastoreError
from store_scp.datastore.local import DEFAULT_DATASTORE_ID, LocalDatastore
from store_scp.datastore.local.errors import ACCESS_DENIED, INTERNAL, NOT_FOUND, VALIDATION

__all__ = [
    "SERVICE_NAME",
    "check_shape",
    "main",
    "make_app",
    "service_model",
    "start_api_server",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "medical-imaging"
TEST_HOOKS_PATH = "/_store-scp/test-hooks"
_TEST_HOOKS = frozenset(
    {
        "inject_errors",
        "throttle_next_starts",
        "fail_next_jobs",
        "delay_next_manifests",
        "stall_next_jobs",
        "fail_files",
        "hold_jobs",
        "clear_faults",
    }
)
_LOCAL_S3URI = re.compile(r"file://(localhost)?/.*", re.DOTALL)


@functools.cache
def service_model() -> ServiceModel:
    """botocore's model of the medical-imaging service."""
    return botocore.session.get_session().get_service_model(SERVICE_NAME)


class _ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error_message(exc: DatastoreError) -> str:
    text = str(exc)
    prefix = f"{exc.code}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


# --- shape checks --------------------------------------------------------------------------


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    # The model's patterns are Java regular expressions; this one construct differs.
    return re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7F]"), re.DOTALL)


def check_shape(
    shape: Shape, value: Any, path: str = "", errors: list[str] | None = None
) -> list[str]:
    """Every way `value` breaks `shape` (types, required members, unknown members, unions,
    min/max lengths and values, patterns, enums), as messages; empty when it conforms."""
    errors = [] if errors is None else errors
    where = path or shape.name
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object")
            return errors
        members = shape.members  # type: ignore[attr-defined]
        for name in meta.get("required", []):
            if value.get(name) is None:
                errors.append(f"{where}: missing required member {name}")
        for name, item in value.items():
            if name not in members:
                errors.append(f"{where}: unknown member {name}")
            elif item is not None:
                check_shape(members[name], item, f"{where}.{name}", errors)
        if meta.get("union") and sum(1 for v in value.values() if v is not None) != 1:
            errors.append(f"{where}: exactly one member must be set")
    elif kind == "list":
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list")
            return errors
        _check_range(len(value), meta, where, "length", errors)
        for i, item in enumerate(value):
            check_shape(shape.member, item, f"{where}[{i}]", errors)  # type: ignore[attr-defined]
    elif kind == "map":
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object")
            return errors
        for k, v in value.items():
            check_shape(shape.key, k, f"{where} key", errors)  # type: ignore[attr-defined]
            check_shape(shape.value, v, f"{where}.{k}", errors)  # type: ignore[attr-defined]
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string")
            return errors
        _check_range(len(value), meta, where, "length", errors)
        enum = meta.get("enum")
        if enum and value not in enum:
            errors.append(f"{where}: {value!r} is not one of {', '.join(enum)}")
        pattern = meta.get("pattern")
        if pattern and not _pattern(pattern).fullmatch(value):
            local = shape.name == "S3Uri" and _LOCAL_S3URI.fullmatch(value)
            if not local:
                errors.append(f"{where}: does not match the pattern {pattern}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{where}: expected an integer")
            return errors
        _check_range(value, meta, where, "value", errors)
    elif kind in ("float", "double"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"{where}: expected a number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{where}: expected a boolean")
    elif kind == "timestamp":
        if not isinstance(value, datetime | int | float) or isinstance(value, bool):
            errors.append(f"{where}: expected a timestamp")
    elif kind == "blob" and not isinstance(value, bytes | bytearray):
        errors.append(f"{where}: expected bytes")
    return errors


def _check_range(n: int, meta: dict[str, Any], where: str, what: str, errors: list[str]) -> None:
    if "min" in meta and n < meta["min"]:
        errors.append(f"{where}: {what} {n} is below the minimum {meta['min']}")
    if "max" in meta and n > meta["max"]:
        errors.append(f"{where}: {what} {n} is above the maximum {meta['max']}")


# --- request parsing -------------------------------------------------------------------------


def _from_text(shape: Shape, text: str) -> Any:
    kind = shape.type_name
    if kind in ("integer", "long"):
        try:
            return int(text)
        except ValueError as exc:
            raise _ApiError(VALIDATION, f"{shape.name}: {text!r} is not an integer") from exc
    if kind == "boolean":
        if text not in ("true", "false"):
            raise _ApiError(VALIDATION, f"{shape.name}: {text!r} is not a boolean")
        return text == "true"
    if kind == "timestamp":
        return _timestamp(text)
    return text


def _timestamp(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except ValueError:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value
    return value


def _from_json(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        members = shape.members  # type: ignore[attr-defined]
        wire_to_name = {m.serialization.get("name", n): n for n, m in members.items()}
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(wire_to_name.get(key, key))
            out[name] = _from_json(members[name], item) if name in members else item
        return out
    if kind == "list" and isinstance(value, list):
        return [_from_json(shape.member, v) for v in value]  # type: ignore[attr-defined]
    if kind == "map" and isinstance(value, dict):
        return {k: _from_json(shape.value, v) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind == "timestamp":
        return _timestamp(value)
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise _ApiError(VALIDATION, f"{shape.name}: not base64") from exc
    return value


async def _parse(op: OperationModel, request: web.Request) -> dict[str, Any]:
    shape = op.input_shape
    params: dict[str, Any] = {}
    if shape is None:
        return params
    members = shape.members  # type: ignore[attr-defined]
    body = await request.read()
    payload = shape.serialization.get("payload")
    for name, member in members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri":
            if wire in request.match_info:
                params[name] = _from_text(member, request.match_info[wire])
        elif location == "querystring":
            if member.type_name == "list":
                values = request.query.getall(wire, [])
                if values:
                    params[name] = [_from_text(member.member, v) for v in values]
            elif wire in request.query:
                params[name] = _from_text(member, request.query[wire])
        elif location == "header" and wire in request.headers:
            params[name] = _from_text(member, request.headers[wire])
    if payload:
        member = members[payload]
        if member.type_name == "blob":
            if body:
                params[payload] = body
        elif body:
            params[payload] = _from_json(member, _json_body(body))
    elif body:
        doc = _json_body(body)
        if not isinstance(doc, dict):
            raise _ApiError(VALIDATION, "The request body must be a JSON object")
        body_members = {
            m.serialization.get("name", n): n
            for n, m in members.items()
            if not m.serialization.get("location")
        }
        for key, value in doc.items():
            name = body_members.get(key)
            if name is None:
                params[key] = value  # reported as an unknown parameter by the validator
            else:
                params[name] = _from_json(members[name], value)
    return params


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise _ApiError(VALIDATION, "The request body is not valid JSON") from exc


def _validate_input(op: OperationModel, params: dict[str, Any]) -> None:
    shape = op.input_shape
    if shape is None:
        return
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise _ApiError(VALIDATION, report.generate_report())
    errors = check_shape(shape, params)
    if errors:
        raise _ApiError(VALIDATION, "; ".join(errors))


# --- response serialization ------------------------------------------------------------------


def _to_json(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure":
        members = shape.members  # type: ignore[attr-defined]
        return {
            members[k].serialization.get("name", k): _to_json(members[k], v)
            for k, v in value.items()
            if v is not None
        }
    if kind == "list":
        return [_to_json(shape.member, v) for v in value]  # type: ignore[attr-defined]
    if kind == "map":
        return {k: _to_json(shape.value, v) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind == "timestamp":
        return value.timestamp() if isinstance(value, datetime) else value
    if kind == "blob":
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _response(op: OperationModel, result: dict[str, Any], request_id: str) -> web.Response:
    shape = op.output_shape
    headers = {"x-amzn-RequestId": request_id}
    status = int(op.http.get("responseCode", 200))
    if shape is None:
        return web.Response(status=status, body=b"{}", headers=headers, content_type=None)
    errors = check_shape(shape, result)
    if errors:
        log.error("%s: response does not match the model: %s", op.name, "; ".join(errors))
        raise _ApiError(INTERNAL, "The response could not be produced")
    members = shape.members  # type: ignore[attr-defined]
    payload = shape.serialization.get("payload")
    doc: dict[str, Any] = {}
    raw: bytes | None = None
    for name, value in result.items():
        if value is None:
            continue
        member = members[name]
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "header":
            headers[wire] = str(value)
        elif name == payload:
            if member.type_name == "blob":
                raw = bytes(value)
            else:
                raw = json.dumps(_to_json(member, value)).encode()
                headers.setdefault("Content-Type", "application/json")
        else:
            doc[wire] = _to_json(member, value)
    if payload is None:
        raw = json.dumps(doc).encode()
        headers["Content-Type"] = "application/json"
    headers.setdefault("Content-Type", "application/octet-stream")
    return web.Response(status=status, body=raw or b"", headers=headers)


def _error_response(
    op: OperationModel | None, code: str, message: str, request_id: str
) -> web.Response:
    model = service_model()
    if op is not None and code not in {e.name for e in op.error_shapes}:
        log.error("%s cannot answer %s (not in the model); answering %s", op.name, code, INTERNAL)
        code, message = INTERNAL, "An internal error occurred"
    shape = model.shape_for(code)
    body = {"message": message or code}
    errors = check_shape(shape, body)
    if errors:  # pragma: no cover - every error shape of the model takes a message string
        log.error("error body does not match %s: %s", code, "; ".join(errors))
        code, body = INTERNAL, {"message": "An internal error occurred"}
        shape = model.shape_for(INTERNAL)
    status = int(shape.metadata["error"]["httpStatusCode"])
    headers = {
        "x-amzn-ErrorType": code,
        "x-amzn-RequestId": request_id,
        "Content-Type": "application/json",
    }
    return web.Response(status=status, body=json.dumps(body).encode(), headers=headers)


# --- operations ------------------------------------------------------------------------------

_Handler = Callable[[LocalDatastore, dict[str, Any]], dict[str, Any]]


def _same_datastore(ds: LocalDatastore, params: dict[str, Any]) -> None:
    if params.get("datastoreId") != ds.datastore_id:
        raise DatastoreError(
            NOT_FOUND, f"Datastore {params.get('datastoreId')} does not exist", retryable=False
        )


def _list_datastores(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    ds.check_fault("ListDatastores")
    props = ds.datastore_properties()
    summary = {
        k: props[k]
        for k in (
            "datastoreId",
            "datastoreName",
            "datastoreStatus",
            "datastoreArn",
            "createdAt",
            "updatedAt",
        )
    }
    wanted = params.get("datastoreStatus")
    return {"datastoreSummaries": [] if wanted not in (None, "ACTIVE") else [summary]}


def _get_datastore(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    ds.check_fault("GetDatastore")
    _same_datastore(ds, params)
    return {"datastoreProperties": ds.datastore_properties()}


def _start_import(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    if params.get("importConfiguration"):
        raise DatastoreError(
            VALIDATION,
            "importConfiguration is not supported by the local datastore",
            retryable=False,
        )
    return ds.start_dicom_import_job(
        job_name=params.get("jobName"),
        client_token=params["clientToken"],
        input_uri=params["inputS3Uri"],
        output_uri=params["outputS3Uri"],
        role_arn=params["dataAccessRoleArn"],
    )


def _get_import(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    return {"jobProperties": ds.get_dicom_import_job(params["jobId"])}


def _list_imports(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    return ds.list_dicom_import_jobs(
        job_status=params.get("jobStatus"),
        max_results=params.get("maxResults"),
        next_token=params.get("nextToken"),
    )


def _search(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    return ds.search_image_sets(
        params.get("searchCriteria"),
        max_results=params.get("maxResults"),
        next_token=params.get("nextToken"),
    )


def _get_image_set(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    return ds.get_image_set(params["imageSetId"], params.get("versionId"))


def _get_metadata(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    blob = ds.get_image_set_metadata(params["imageSetId"], params.get("versionId"))
    return {
        "imageSetMetadataBlob": blob,
        "contentType": "application/json",
        "contentEncoding": "gzip",
    }


def _get_frame(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    frame_id = params["imageFrameInformation"]["imageFrameId"]
    data, content_type = ds.get_image_frame(params["imageSetId"], frame_id)
    return {"imageFrameBlob": data, "contentType": content_type}


def _list_versions(ds: LocalDatastore, params: dict[str, Any]) -> dict[str, Any]:
    _same_datastore(ds, params)
    return ds.list_image_set_versions(
        params["imageSetId"],
        max_results=params.get("maxResults"),
        next_token=params.get("nextToken"),
    )


_HANDLERS: dict[str, _Handler] = {
    "ListDatastores": _list_datastores,
    "GetDatastore": _get_datastore,
    "StartDICOMImportJob": _start_import,
    "GetDICOMImportJob": _get_import,
    "ListDICOMImportJobs": _list_imports,
    "SearchImageSets": _search,
    "GetImageSet": _get_image_set,
    "GetImageSetMetadata": _get_metadata,
    "GetImageFrame": _get_frame,
    "ListImageSetVersions": _list_versions,
}

#: The operations this API implements; the model's others answer AccessDeniedException.
IMPLEMENTED_OPERATIONS = frozenset(_HANDLERS)


def _route_path(request_uri: str) -> str:
    path = request_uri.split("?", 1)[0]
    return re.sub(r"\{([A-Za-z0-9_]+)\+\}", r"{\1:.+}", path)


def _operation_handler(
    ds: LocalDatastore, op: OperationModel
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    impl = _HANDLERS.get(op.name)

    async def handle(request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        try:
            params = await _parse(op, request)
            _validate_input(op, params)
            if impl is None:
                raise _ApiError(ACCESS_DENIED, f"{op.name} is not supported by the local datastore")
            result = await asyncio.to_thread(impl, ds, params)
            return _response(op, result, request_id)
        except _ApiError as exc:
            return _error_response(op, exc.code, exc.message, request_id)
        except DatastoreError as exc:
            return _error_response(op, exc.code, _error_message(exc), request_id)
        except Exception:
            log.exception("%s failed", op.name)
            return _error_response(op, INTERNAL, "An internal error occurred", request_id)

    return handle


@web.middleware
async def _unknown_operation(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        body = {"message": f"No operation at {request.method} {request.path}"}
        return web.Response(
            status=404,
            body=json.dumps(body).encode(),
            headers={
                "x-amzn-ErrorType": "UnknownOperationException",
                "Content-Type": "application/json",
            },
        )


def _test_hooks_handler(
    ds: LocalDatastore,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            doc = await request.json()
            hook = doc["hook"]
            args = doc.get("args") or {}
            if hook not in _TEST_HOOKS or not isinstance(args, dict):
                raise ValueError(hook)
            await asyncio.to_thread(getattr(ds, hook), **args)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"message": f"bad test hook request: {exc}"}, status=400)
        return web.Response(status=204)

    return handle


def make_app(datastore: LocalDatastore, *, test_hooks: bool = False) -> web.Application:
    """The HealthImaging API of `datastore` as an aiohttp application."""
    app = web.Application(middlewares=[_unknown_operation], client_max_size=16 * 1024 * 1024)
    model = service_model()
    for name in model.operation_names:
        op = model.operation_model(name)
        app.router.add_route(
            op.http["method"], _route_path(op.http["requestUri"]), _operation_handler(datastore, op)
        )
    if test_hooks:
        app.router.add_post(TEST_HOOKS_PATH, _test_hooks_handler(datastore))
    return app


async def start_api_server(
    datastore: LocalDatastore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    test_hooks: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve the API on `host:port` (0: any free port); returns the runner and the port.
    Stop it with `await runner.cleanup()`."""
    runner = web.AppRunner(make_app(datastore, test_hooks=test_hooks), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


def main(argv: list[str] | None = None) -> int:
    """Serve a local datastore's HealthImaging API until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m store_scp.datastore.api")
    parser.add_argument("--root", required=True, type=Path, help="the datastore's folder")
    parser.add_argument("--datastore-id", default=DEFAULT_DATASTORE_ID)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lossless-format", choices=("auto", "htj2k", "original"), default="auto")
    parser.add_argument(
        "--s3-endpoint-url",
        help="S3 endpoint for s3:// job input and output (default: AWS); credentials and "
        "region come from the environment, as for any boto3 client",
    )
    parser.add_argument(
        "--job-threads",
        type=int,
        default=0,
        help="threads that run import jobs (default 0: half the cores, at least 2, at most 4)",
    )
    parser.add_argument("--test-hooks", action="store_true", help="enable fault injection")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    async def serve() -> None:
        datastore = LocalDatastore(
            args.root,
            args.datastore_id,
            lossless_format=args.lossless_format,
            s3_endpoint_url=args.s3_endpoint_url,
            job_threads=args.job_threads,
        )
        try:
            runner, port = await start_api_server(
                datastore, args.host, args.port, test_hooks=args.test_hooks
            )
            print(f"listening on http://{args.host}:{port}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            await runner.cleanup()
        finally:
            await asyncio.to_thread(datastore.close)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
