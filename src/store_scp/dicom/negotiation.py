"""Association negotiation for the acceptor: explicit tables in, one A-ASSOCIATE-AC or -RJ out.

Pure code. What is accepted comes from `uids.STORAGE_SOP_CLASSES`, `uids.TRANSFER_SYNTAXES`
and the configured private SOP classes, never from matching names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from . import pdu as P
from . import uids

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_SOURCE_USER, RJ_SOURCE_ACSE, RJ_SOURCE_PRESENTATION = 1, 2, 3
REJECT_NO_REASON = (RJ_PERMANENT, RJ_SOURCE_USER, 1)
REJECT_APPLICATION_CONTEXT = (RJ_PERMANENT, RJ_SOURCE_USER, 2)
REJECT_CALLING_AE = (RJ_PERMANENT, RJ_SOURCE_USER, 3)
REJECT_CALLED_AE = (RJ_PERMANENT, RJ_SOURCE_USER, 7)
REJECT_PROTOCOL_VERSION = (RJ_PERMANENT, RJ_SOURCE_ACSE, 2)
REJECT_LOCAL_LIMIT = (RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, 2)

REJECT_REASONS = {
    REJECT_NO_REASON: "no reason given",
    REJECT_APPLICATION_CONTEXT: "application context name not supported",
    REJECT_CALLING_AE: "calling AE title not recognized",
    REJECT_CALLED_AE: "called AE title not recognized",
    REJECT_PROTOCOL_VERSION: "protocol version not supported",
    REJECT_LOCAL_LIMIT: "local limit exceeded",
}

_UNCOMPRESSED_PREFERENCE = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
_LAST_RESORT = (uids.EXPLICIT_VR_BIG_ENDIAN, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def choose_transfer_syntax(offered: Iterable[str], *, encapsulated_ok: bool = True) -> str | None:
    """The syntax we accept from those a presentation context offers, or None.

    Preference (documented in docs/conformance.md):
    1. a lossless compressed syntax, in the requestor's order (keep the sender's bytes);
    2. a lossy (or possibly lossy) compressed syntax that the requestor offered first: it
       most likely holds the object that way and may not be able to decompress it;
    3. Explicit VR Little Endian; 4. Implicit VR Little Endian;
    5. any other lossy compressed syntax, in the requestor's order: behind the uncompressed
       ones, so that a sender holding uncompressed pixels is not invited to compress lossily;
    6. Explicit VR Big Endian (retired) or Deflated Explicit VR Little Endian, only when
       nothing else is offered.
    """
    known = [uid for uid in offered if uid in uids.TRANSFER_SYNTAXES]
    if encapsulated_ok:
        for uid in known:
            ts = uids.TRANSFER_SYNTAXES[uid]
            if ts.encapsulated and ts.lossless:
                return uid
        if known and uids.TRANSFER_SYNTAXES[known[0]].encapsulated:
            return known[0]
    for uid in _UNCOMPRESSED_PREFERENCE:
        if uid in known:
            return uid
    if encapsulated_ok:
        for uid in known:
            if uids.TRANSFER_SYNTAXES[uid].encapsulated:
                return uid
    for uid in known:
        if uid in _LAST_RESORT:
            return uid
    return None


@dataclass(slots=True)
class Policy:
    """Who may associate and what they may send."""

    ae_title: str
    require_called_ae: bool = True
    allowed_calling_aes: frozenset[str] = frozenset()  # empty: any calling AE
    private_sop_classes: frozenset[str] = frozenset()
    max_pdu_length: int = 1 << 20


@dataclass(slots=True)
class Outcome:
    """The answer to an A-ASSOCIATE-RQ, and what the session needs to know afterwards."""

    accept: P.AssociateAC | None = None
    reject: P.AssociateRJ | None = None
    reason: str = ""
    #: Accepted presentation contexts: id -> (abstract syntax, transfer syntax)
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: The requestor's maximum PDU length (0: unlimited).
    peer_max_pdu: int = 0


def _reject(rq: P.AssociateRQ, code: tuple[int, int, int]) -> Outcome:
    return Outcome(reject=P.AssociateRJ(*code), reason=REJECT_REASONS[code])


def check_request(rq: P.AssociateRQ, policy: Policy) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ (result, source, reason) this request earns, or None."""
    if not rq.protocol_version & 1:
        return REJECT_PROTOCOL_VERSION
    if rq.application_context != uids.APPLICATION_CONTEXT_NAME:
        return REJECT_APPLICATION_CONTEXT
    if policy.require_called_ae and rq.called_ae != policy.ae_title:
        return REJECT_CALLED_AE
    if policy.allowed_calling_aes and rq.calling_ae not in policy.allowed_calling_aes:
        return REJECT_CALLING_AE
    return None


def negotiate(rq: P.AssociateRQ, policy: Policy) -> Outcome:
    code = check_request(rq, policy)
    if code is not None:
        return _reject(rq, code)

    proposed_roles = {role.sop_class_uid: role for role in rq.user_info.roles}
    results: list[P.PresentationContextAC] = []
    contexts: dict[int, tuple[str, str]] = {}
    reply_roles: dict[str, P.RoleSelection] = {}
    seen: set[int] = set()
    for pc in rq.presentation_contexts:
        if pc.id in seen:
            continue  # a repeated id is answered once, for its first proposal
        seen.add(pc.id)
        abstract = pc.abstract_syntax
        is_verification = abstract == uids.VERIFICATION_SOP_CLASS
        if not (
            is_verification
            or abstract in uids.STORAGE_SOP_CLASSES
            or abstract in policy.private_sop_classes
        ):
            results.append(P.PresentationContextAC(pc.id, P.PCResult.ABSTRACT_SYNTAX_NOT_SUPPORTED))
            continue
        role = proposed_roles.get(abstract)
        if role is not None and not role.scu_role:
            # The requestor offers only to be the SCP: we are never the SCU, so the context
            # is useless to it, and a role proposed as 0 may not be accepted (PS3.7 D.3.3.4).
            results.append(P.PresentationContextAC(pc.id, P.PCResult.USER_REJECTION))
            continue
        syntax = choose_transfer_syntax(pc.transfer_syntaxes, encapsulated_ok=not is_verification)
        if syntax is None:
            results.append(
                P.PresentationContextAC(pc.id, P.PCResult.TRANSFER_SYNTAXES_NOT_SUPPORTED)
            )
            continue
        results.append(P.PresentationContextAC(pc.id, P.PCResult.ACCEPTANCE, syntax))
        contexts[pc.id] = (abstract, syntax)
        if role is not None:
            # We accept the requestor as SCU and decline to be an SCU ourselves.
            reply_roles[abstract] = P.RoleSelection(abstract, scu_role=True, scp_role=False)

    info = P.UserInformation(
        max_length=policy.max_pdu_length,
        implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
        implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
        # Operations are performed one at a time (PS3.7 D.3.3.3).
        async_ops_window=(1, 1) if rq.user_info.async_ops_window is not None else None,
        roles=list(reply_roles.values()),
    )
    accept = P.AssociateAC(
        called_ae=rq.called_ae or policy.ae_title,
        calling_ae=rq.calling_ae or "ANONYMOUS",
        application_context=uids.APPLICATION_CONTEXT_NAME,
        presentation_contexts=results,
        user_info=info,
    )
    return Outcome(accept=accept, contexts=contexts, peer_max_pdu=rq.user_info.max_length or 0)
