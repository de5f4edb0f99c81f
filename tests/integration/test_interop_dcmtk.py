"""Interoperability with DCMTK 3.6.7: echoscu, storescu and dcmsend against `store-scp serve`.

DCMTK's senders parse each file and encode the data set again on the wire (they drop trailing
padding, write sequences with explicit lengths, convert syntaxes when the negotiation asks for
it), so the bytes on the wire are not always the file's bytes. What they put on the wire is
captured by a reference receiver: DCMTK `storescp +B` (bit preserving), run on the same files
with the same sender options. It accepts transfer syntaxes in the preference order documented in
docs/conformance.md (lossless compressed, Explicit VR Little Endian, Implicit VR Little Endian,
lossy compressed, Big Endian / Deflate), so it negotiates what store-scp negotiates. Every
stored object must then carry exactly the reference's data set bytes and transfer syntax.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom import uid as U

from store_scp.dicom.uids import IMPLEMENTATION_CLASS_UID
from tests.integration.interop_data import (
    DCMTK,
    DCMTK_ENV,
    NEWER_THAN_DCMTK_367,
    NOT_ENCAPSULATED,
    Corpus,
    CorpusFile,
    check_stored,
    corpus_file,
    log_records,
    make_ct12,
    planned_files,
    shared_corpus,
    split_part10,
)
from tests.serverproc import ServerProcess, free_port, start_server, wait_for

TOOLS = ("echoscu", "storescu", "dcmsend", "storescp")
pytestmark = pytest.mark.skipif(
    not all((DCMTK / tool).exists() for tool in TOOLS), reason="DCMTK tools are not installed"
)

CALLED_AE = "STORE_SCP"
VERIFICATION = "1.2.840.10008.1.1"

# The acceptor's preference, as documented (and the reference receiver is told).
LOSSLESS_ENCAPSULATED = (
    U.JPEGLossless,
    U.JPEGLosslessSV1,
    U.JPEGLSLossless,
    U.JPEG2000Lossless,
    U.JPEG2000MCLossless,
    U.RLELossless,
)
LOSSY_ENCAPSULATED = (
    U.JPEGBaseline8Bit,
    U.JPEGExtended12Bit,
    U.JPEGLSNearLossless,
    U.JPEG2000,
    U.JPEG2000MC,
)
REFERENCE_PREFERENCE = (
    *LOSSLESS_ENCAPSULATED,
    U.ExplicitVRLittleEndian,
    U.ImplicitVRLittleEndian,
    *LOSSY_ENCAPSULATED,
    U.ExplicitVRBigEndian,
    U.DeflatedExplicitVRLittleEndian,
)

# storescu's options that propose one compressed syntax (plus the uncompressed ones).
STORESCU_SYNTAX_OPTIONS = {
    "-xs": U.JPEGLosslessSV1,
    "-xy": U.JPEGBaseline8Bit,
    "-xx": U.JPEGExtended12Bit,
    "-xv": U.JPEG2000Lossless,
    "-xw": U.JPEG2000,
    "-xt": U.JPEGLSLossless,
    "-xu": U.JPEGLSNearLossless,
    "-xr": U.RLELossless,
    "-xd": U.DeflatedExplicitVRLittleEndian,
}


@dataclass(frozen=True)
class Mode:
    """One way of sending the corpus with a DCMTK tool."""

    name: str
    tool: str
    options: tuple[str, ...]
    syntaxes: frozenset[str]  # the source syntaxes this mode sends
    #: The sender proposes each file's own syntax alone in its context: the wire carries it.
    own_syntax: bool = False

    def sends(self, syntax: str) -> bool:
        return syntax in self.syntaxes and syntax not in NEWER_THAN_DCMTK_367


ALL_SYNTAXES = frozenset(syntax for _, syntax in planned_files())
MODES = (
    # Default settings: uncompressed contexts only; storescu converts Big Endian and Deflate.
    Mode("storescu-default", "storescu", (), NOT_ENCAPSULATED),
    # A configuration profile proposing, per SOP class, one context per syntax of the corpus.
    Mode("storescu-own-syntax", "storescu", ("-xf", "{config}", "OwnSyntax"), ALL_SYNTAXES, True),
    # dcmsend proposes each file's syntax (with uncompressed fallbacks for uncompressed files).
    Mode("dcmsend", "dcmsend", (), ALL_SYNTAXES),
    # The same in 4 KiB PDUs: every object arrives in many P-DATA PDUs and PDV fragments.
    Mode("dcmsend-4k-pdu", "dcmsend", ("--max-send-pdu", "4096"), ALL_SYNTAXES),
    # One context offering JPEG Lossless SV1 and the uncompressed syntaxes together: the
    # acceptor must pick the lossless compressed one (the sender's bytes as they are).
    Mode("storescu-xs-combined", "storescu", ("-xs", "+C"), frozenset({U.JPEGLosslessSV1}), True),
    *(
        Mode(f"storescu{option}", "storescu", (option,), frozenset({syntax}))
        for option, syntax in STORESCU_SYNTAX_OPTIONS.items()
    ),
)
MODES_BY_NAME = {mode.name: mode for mode in MODES}

#: (mode, corpus key) -> reason, for server bugs found by these tests.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return shared_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("dcmtk-peer") / "srv")
    try:
        yield srv
    finally:
        srv.stop()


def write_config(path: Path, files: list[CorpusFile]) -> Path:
    """A DCMTK association configuration file with two profiles:

    RefSCP: the reference receiver's contexts, the documented preference for every SOP class;
    OwnSyntax: for storescu, one context per (SOP class, transfer syntax) of the files.
    """
    syntaxes = sorted({f.transfer_syntax for f in files})
    classes = sorted({f.sop_class_uid for f in files} | {make_ct12()[0].SOPClassUID})
    lines = ["[[TransferSyntaxes]]", "[RefPreference]"]
    lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(REFERENCE_PREFERENCE, 1)]
    for n, ts in enumerate(syntaxes, 1):
        lines += [f"[Own{n}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[RefSCP]"]
    lines += [
        f"PresentationContext{i} = {sop}\\RefPreference"
        for i, sop in enumerate([VERIFICATION, *classes], 1)
    ]
    lines.append("[OwnSyntax]")
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
    assert len(pairs) <= 128, "storescu proposes at most 128 presentation contexts"
    lines += [
        f"PresentationContext{i} = {sop}\\Own{syntaxes.index(ts) + 1}"
        for i, (sop, ts) in enumerate(pairs, 1)
    ]
    lines += ["[[Profiles]]", "[RefSCP]", "PresentationContexts = RefSCP"]
    lines += ["[OwnSyntax]", "PresentationContexts = OwnSyntax"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def dcmtk_config(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("dcmtk-config") / "interop.cfg", corpus.for_dcmtk())


def run_dcmtk(
    tool: str, *args: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    cmd = [str(DCMTK / tool), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def echo(port: int, called_ae: str = CALLED_AE) -> subprocess.CompletedProcess[str]:
    return run_dcmtk("echoscu", "-to", "5", "-aec", called_ae, "127.0.0.1", str(port), timeout=15)


@contextmanager
def reference_scp(folder: Path, config: Path) -> Iterator[int]:
    """DCMTK storescp +B on a free port, writing what it receives into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (folder.parent / f"{folder.name}.log").open("w")
    cmd = [str(DCMTK / "storescp"), "-xf", str(config), "RefSCP", "-aet", CALLED_AE]
    cmd += ["+B", "-od", str(folder), str(port)]
    proc = subprocess.Popen(cmd, env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while echo(port).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reference storescp did not start: {cmd}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@dataclass
class Delivery:
    """The same files sent by the same tool and options to store-scp and to the reference."""

    mode: Mode
    calling_ae: str
    result: subprocess.CompletedProcess[str]
    reference_result: subprocess.CompletedProcess[str]
    stored: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> our object
    reference: dict[str, Path] = field(default_factory=dict)  # ... -> storescp's file


def send_args(mode: Mode, calling_ae: str, port: int, config: Path) -> list[str]:
    options = [config.as_posix() if o == "{config}" else o for o in mode.options]
    # -nh: go on after a failed store, so one failure does not hide the others.
    return [*options, "-nh", "-aet", calling_ae, "-aec", CALLED_AE, "127.0.0.1", str(port)]


def deliver(
    mode: Mode, files: list[CorpusFile], server: ServerProcess, config: Path, work: Path
) -> Delivery:
    calling_ae = mode.name.upper().replace("-", "_")[:16]
    paths = [f.path for f in files]
    before = set(server.stored_files())
    result = run_dcmtk(mode.tool, *send_args(mode, calling_ae, server.port, config), *paths)
    new = [p for p in server.stored_files() if p not in before]
    ref_dir = work / "reference"
    with reference_scp(ref_dir, config) as port:
        reference_result = run_dcmtk(mode.tool, *send_args(mode, calling_ae, port, config), *paths)
    delivery = Delivery(mode, calling_ae, result, reference_result)
    delivery.stored = {p.stem: p for p in new}
    assert len(delivery.stored) == len(new), "one delivery stored an instance twice"
    for p in ref_dir.iterdir():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        delivery.reference[str(ds.SOPInstanceUID)] = p
    return delivery


class Deliveries:
    """Mode name -> its delivery, made on first use and kept for the module."""

    def __init__(
        self, corpus: Corpus, server: ServerProcess, config: Path, tmp: pytest.TempPathFactory
    ) -> None:
        self.corpus, self.server, self.config, self.tmp = corpus, server, config, tmp
        self._done: dict[str, Delivery] = {}

    def __getitem__(self, name: str) -> Delivery:
        if name not in self._done:
            mode = MODES_BY_NAME[name]
            files = [f for f in self.corpus.for_dcmtk() if mode.sends(f.transfer_syntax)]
            work = self.tmp.mktemp(name)
            self._done[name] = deliver(mode, files, self.server, self.config, work)
        return self._done[name]


@pytest.fixture(scope="module")
def deliveries(
    corpus: Corpus,
    server: ServerProcess,
    dcmtk_config: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Deliveries:
    return Deliveries(corpus, server, dcmtk_config, tmp_path_factory)


def _params() -> list[object]:
    params: list[object] = []
    for mode in MODES:
        for key, syntax in planned_files():
            if not mode.sends(syntax):
                continue
            marks = []
            if (mode.name, key) in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(mode.name, key)]))
            params.append(pytest.param(mode.name, key, id=f"{mode.name}-{key}", marks=marks))
    return params


# --------------------------------------------------------------------------------------------
# C-ECHO and association rejection


def test_echoscu_succeeds(server: ServerProcess) -> None:
    result = echo(server.port)
    assert result.returncode == 0, result.stderr


def test_echoscu_wrong_called_ae_is_rejected(server: ServerProcess) -> None:
    result = echo(server.port, called_ae="NOT_OUR_AE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr + result.stdout
    deadline = time.monotonic() + 5
    while True:
        rejected = [
            r
            for r in log_records(server.log())
            if r.get("msg") == "association rejected" and r.get("called_ae") == "NOT_OUR_AE"
        ]
        if rejected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rejected, "no 'association rejected' log line"
    assert rejected[-1]["why"] == "called AE title not recognized"
    assert (rejected[-1]["result"], rejected[-1]["source"], rejected[-1]["reason"]) == (1, 1, 7)


# --------------------------------------------------------------------------------------------
# C-STORE


@pytest.mark.parametrize(("mode_name", "key"), _params())
def test_dcmtk_store(mode_name: str, key: str, corpus: Corpus, deliveries: Deliveries) -> None:
    source = corpus_file(corpus, key)
    delivery = deliveries[mode_name]
    mode = delivery.mode
    uid = source.sop_instance_uid
    output = delivery.result.stderr + delivery.result.stdout
    assert uid in delivery.reference, (
        f"the reference storescp did not receive {key}: "
        f"{delivery.reference_result.stderr}{delivery.reference_result.stdout}"
    )
    assert uid in delivery.stored, f"{key} was not stored by store-scp; {mode.tool} said:\n{output}"
    ref_meta = pydicom.dcmread(delivery.reference[uid], stop_before_pixels=True).file_meta
    wire_syntax = str(ref_meta.TransferSyntaxUID)
    wire_dataset = split_part10(delivery.reference[uid].read_bytes())[1]
    if mode.own_syntax or (source.encapsulated and mode.name != "storescu-default"):
        assert wire_syntax == source.transfer_syntax, f"{key} was converted to {wire_syntax}"
    check_stored(
        delivery.stored[uid],
        source=source,
        calling_ae=delivery.calling_ae,
        wire_syntax=wire_syntax,
        wire_dataset=wire_dataset,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
    )


@pytest.mark.parametrize("mode_name", [mode.name for mode in MODES])
def test_dcmtk_sender_reports_success(
    mode_name: str, corpus: Corpus, deliveries: Deliveries
) -> None:
    """The sender saw every store succeed (exit 0) and nothing extra was stored."""
    delivery = deliveries[mode_name]
    broken = {key for (name, key) in KNOWN_BUGS if name == mode_name}
    expected = {
        f.sop_instance_uid
        for f in corpus.for_dcmtk()
        if delivery.mode.sends(f.transfer_syntax) and f.key not in broken
    }
    assert expected, "this mode sent nothing"
    if not broken:
        assert delivery.result.returncode == 0, delivery.result.stderr + delivery.result.stdout
        assert set(delivery.stored) == expected
    else:
        assert expected <= set(delivery.stored)


def test_parallel_storescu(server: ServerProcess, tmp_path: Path) -> None:
    """8 storescu processes at once, each with its own files: all stored, byte for byte."""
    senders, per_sender = 8, 6
    jobs: list[tuple[str, list[Path]]] = []
    expected: dict[str, tuple[str, bytes]] = {}  # SOP Instance UID -> (calling AE, data set)
    for n in range(senders):
        ae = f"PARALLEL{n}"
        folder = tmp_path / ae
        folder.mkdir()
        paths = []
        for i in range(per_sender):
            ds, _ = make_ct12(description=f"parallel {n}/{i}")
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
            path = folder / f"{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            expected[str(ds.SOPInstanceUID)] = (ae, split_part10(path.read_bytes())[1])
        jobs.append((ae, paths))

    before = set(server.stored_files())
    with ThreadPoolExecutor(senders) as pool:
        results = list(
            pool.map(
                lambda job: run_dcmtk(
                    "storescu",
                    "-aet",
                    job[0],
                    "-aec",
                    CALLED_AE,
                    "127.0.0.1",
                    str(server.port),
                    *job[1],
                ),
                jobs,
            )
        )
    for (ae, _), result in zip(jobs, results, strict=True):
        assert result.returncode == 0, f"{ae}: {result.stderr}{result.stdout}"
    new = {p.stem: p for p in server.stored_files() if p not in before}
    assert set(new) == set(expected), "objects missing or extra"
    for uid, (ae, dataset) in expected.items():
        stored_dataset = split_part10(new[uid].read_bytes())[1]
        assert stored_dataset == dataset, uid
        meta = pydicom.dcmread(new[uid], stop_before_pixels=True).file_meta
        assert str(meta.get("SourceApplicationEntityTitle", "")).strip() == ae
        assert meta.TransferSyntaxUID == U.ExplicitVRLittleEndian
    assert server.staging_files() == [], "staging files left behind"
    accepted = {
        r.get("calling_ae")
        for r in log_records(server.log())
        if r.get("msg") == "association accepted"
    }
    assert {ae for ae, _ in jobs} <= accepted

    # They really ran side by side (the server does not serialize associations).
    def events() -> list[tuple[float, int]]:
        return sorted(
            (r["ts"], 0 if r["msg"] == "association ended" else 1)
            for r in log_records(server.log())
            if str(r.get("calling_ae", "")).startswith("PARALLEL")
            and r.get("msg") in ("association accepted", "association ended")
        )

    # The end lines are logged when the server sees the close, maybe after storescu exited.
    wait_for(lambda: len(events()) == 2 * senders, "every association's start and end lines")
    active = peak = 0
    for _, change in events():
        active += 1 if change else -1
        peak = max(peak, active)
    assert peak >= 2, "the associations never overlapped"
