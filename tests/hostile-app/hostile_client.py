"""A ClientApp that trains as fedvssl's does, then, on a SuperNode whose node config says
``hostile=true``, corrupts its reply: a NaN in round 1, a tensor of the wrong shape in round 2.
"""

import numpy as np
from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from fedvssl.federated import client_app as honest

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    if str(context.node_config.get("hostile", "")).lower() != "true":
        return reply
    arrays = reply.content["arrays"]
    key = next(k for k, v in arrays.items() if v.dtype == "float32" and len(v.shape) > 1)
    server_round = int(msg.content["config"]["server-round"])
    if server_round == 1:
        values = arrays[key].numpy().copy()
        values.reshape(-1)[0] = np.nan
        arrays[key] = Array(values)
    elif server_round == 2:
        arrays[key] = Array(np.zeros(3, np.float32))
    return reply


@app.query()
def query(msg: Message, context: Context) -> Message:
    return honest.query(msg, context)
