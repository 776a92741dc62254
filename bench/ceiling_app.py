"""The HTTP ceiling of bench/protocols.py: /locate's unavoidable work as a bare ASGI app.

Served by the same uvicorn (httptools, uvloop) as `csipos serve`, it does for a JSON body
`{"site", "csi": [8][103][2]}` only what any server must: read the body, parse it with
orjson, make the float32 array, one onnxruntime call (inline, one thread), and answer the
same JSON as /locate, serialised with orjson. No routing, validation, auth or metrics.

    CEILING_MODEL=model.onnx python3 -m uvicorn ceiling_app:app --app-dir bench
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

_opts = ort.SessionOptions()
_opts.intra_op_num_threads = 1
_opts.inter_op_num_threads = 1
SESSION = ort.InferenceSession(
    os.environ["CEILING_MODEL"], _opts, providers=["CPUExecutionProvider"]
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] != "POST":  # the readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    doc = orjson.loads(body)
    csi = np.asarray(doc["csi"], dtype=np.float32)[None]
    position, sigma = SESSION.run(["position", "sigma"], {"csi": csi})
    positions = [
        {"x": x, "y": y, "sigma_x": sx, "sigma_y": sy}
        for (x, y), (sx, sy) in zip(position.tolist(), sigma.tolist(), strict=True)
    ]
    answer = orjson.dumps(
        {
            "site": doc["site"],
            "model_version": "v1",
            "loss": "nll",
            "sigma_available": True,
            "positions": positions,
        }
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
