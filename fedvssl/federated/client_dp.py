"""Client-side clipping for central DP: Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod`` on our ClientApp.

The server's DP wrapper (``strategy.dp`` with ``DifferentialPrivacyClientSide*Clipping``,
:mod:`fedvssl.federated.optimizers`) puts the clipping norm in each round's config, and the
kind of clipping under :data:`KEY_CLIPPING`. :func:`clipping_mod` then hands the message to
Flower's mod of that kind; without the keys (no client-side DP) it does nothing.

Flower's mods clip the whole reply's update; ours travels with the integer BatchNorm
counters, which are no weights (their update is the number of local steps, and a float
scaling of an int64 array fails). The mod therefore sees the floating-point tensors only,
and the counters are put back into the reply after it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

KEY_CLIPPING = "dp-clipping"  # "fixed" or "adaptive": which of Flower's mods clips
MODS = {"fixed": fixedclipping_mod, "adaptive": adaptiveclipping_mod}
__all__ = ["KEY_CLIPPING", "KEY_CLIPPING_NORM", "KEY_NORM_BIT", "clipping_mod"]


def _floats(record: ArrayRecord) -> tuple[ArrayRecord, dict]:
    """The record's floating-point arrays, and the others apart (in the record's order)."""
    floats, others = ArrayRecord(), {}
    for key, array in record.items():
        if np.issubdtype(np.dtype(array.dtype), np.floating):
            floats[key] = array
        else:
            others[key] = array
    return floats, others


def clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's client-side clipping mod of the kind the server asks for, on the float tensors; else nothing."""
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type != "train" or config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    mod = MODS.get(str(config.get(KEY_CLIPPING, "fixed")))
    if mod is None:
        raise ValueError(f"{KEY_CLIPPING}={config.get(KEY_CLIPPING)!r} must be one of {', '.join(MODS)}")
    whole = msg.content["arrays"]
    sent, _ = _floats(whole)
    counters: dict = {}

    def train(message: Message, context: Context) -> Message:
        message.content["arrays"] = whole  # the ClientApp gets the whole message
        reply = call_next(message, context)
        if not reply.has_error():
            floats, others = _floats(reply.content["arrays"])
            counters.update(others)
            reply.content["arrays"] = floats
        return reply

    # Flower's mod reads what was sent before it calls the app: the float tensors only. (The
    # message itself is lent, not copied: a new Message needs the task's identity, which a
    # ClientApp process has only for the message it was given.)
    msg.content["arrays"] = sent
    try:
        out = mod(msg, ctxt, train)
    finally:
        msg.content["arrays"] = whole
    if not out.has_error():
        record = out.content["arrays"]
        full = ArrayRecord()
        for key in whole:  # the server's order
            full[key] = record[key] if key in record else counters[key]
        out.content["arrays"] = full
    return out
