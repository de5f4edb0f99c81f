"""PDU reader output as comparable tokens, for the protocol-core tests."""

from __future__ import annotations

from store_scp.dicom import pdu as P


def tokens(items: list[P.PDU | P.PDV]) -> list[tuple[object, ...]]:
    """PDUs and PDV chunks as tokens; chunks that continue one another are merged."""
    out: list[tuple[object, ...]] = []
    for it in items:
        if isinstance(it, P.PDV):
            last = out[-1] if out else None
            if (
                last
                and last[0] == "pdv"
                and last[1:3] == (it.context_id, it.is_command)
                and not last[4]
                and isinstance(last[3], bytes)
            ):
                out[-1] = (
                    "pdv",
                    it.context_id,
                    it.is_command,
                    last[3] + bytes(it.data),
                    it.is_last,
                )
            else:
                out.append(("pdv", it.context_id, it.is_command, bytes(it.data), it.is_last))
        elif isinstance(it, P.PDataTF):
            out.append(("P-DATA-TF",))
            for pdv in it.pdvs:
                out += tokens([pdv])
        else:
            out.append(("pdu", it))
    return out
