"""``POST /publish_log_v1``: delivery outcomes in, as kumod's log hook posts them
to KumoMTA's TSA daemon (DESIGN 10).

The body is one kumod JSON log record or an array of them
(``sluice.policy.log_record``); the answer comes once every hold the records
call for is durable and in force, and the threshold counts are stored. A
body automation cannot read is refused whole (400 naming the field), so a
sender that corrects and resends it counts nothing twice.
"""

from __future__ import annotations

import msgspec

from sluice.policy import log_record

from ..automation import Automation
from .message import HttpError, Request, Response
from .routes import Router

PATH = "/publish_log_v1"
_encoder = msgspec.json.Encoder()


def add_publish_routes(router: Router, *, automation: Automation) -> None:
    async def publish(request: Request) -> Response:
        if not request.body.strip():
            raise HttpError(400, "INVALID_REQUEST", "a JSON body is required: a KumoMTA log record, or an array of them")
        batch = request.decode_json(log_record.decode, msgspec.DecodeError)
        published = await automation.publish(batch)
        return Response(body=_encoder.encode(published) + b"\n")

    router.add("POST", PATH, publish, change=True)
