"""Log records as kumod writes them: kumo-log-types' ``JsonLogRecord`` through serde.

Every field kumod serialises is here, in its order, including the many
sluice ignores: ``timestamp`` and ``created`` as integer seconds (serde's
``ts_seconds``) beside ``event_time`` and ``created_time`` in RFC 3339 with
nanoseconds (the ``ts_serializer`` proxy), ``recipient`` as a string for one
recipient (``OneOrMany<_, PreferOne>``), ``response.enhanced_code`` as
``{class, subject, detail}`` or null, ``peer_address``, ``source_address``,
``meta``, ``headers``, the TLS fields, ``provider_name`` and ``session_id``.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone


def record(
    *,
    kind: str = "TransientFailure",
    recipient: str | list[str] = "someone@gmail.com",
    queue: str = "acme@gmail.com",
    code: int = 421,
    enhanced: tuple[int, int, int] | None = (4, 7, 28),
    content: str = "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail. "
    "To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
    at: float | None = None,
) -> dict:
    """One record; ``at`` (default: now) is when kumod logged it."""
    at = time.time() if at is None else at
    stamp = datetime.fromtimestamp(at, timezone.utc)
    created = datetime.fromtimestamp(at - 30, timezone.utc)
    return {
        "type": kind,
        "id": uuid.uuid4().hex,
        "sender": "bounce@mailer.example.com",
        "recipient": recipient,
        "queue": queue,
        "site": "pool0->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client",
        "size": 2817,
        "response": {
            "code": code,
            "enhanced_code": None if enhanced is None else dict(zip(("class", "subject", "detail"), enhanced)),
            "content": content,
            "command": ".",
        },
        "peer_address": {"name": "gmail-smtp-in.l.google.com.", "addr": "142.251.2.27"},
        "timestamp": int(at),
        "event_time": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",  # nanoseconds, as chrono writes them
        "created": int(at - 30),
        "created_time": created.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z",
        "num_attempts": 2,
        "bounce_classification": "Uncategorized",
        "egress_pool": "pool0",
        "egress_source": "source0",
        "source_address": {"address": "10.0.0.1:53210"},
        "feedback_report": None,
        "meta": {"tenant": queue.partition("@")[0], "campaign_id": [1, 2, {"nested": True}]},
        "headers": {"Subject": "Your weekly digest", "X-Mailer": None},
        "delivery_protocol": "ESMTP",
        "reception_protocol": "ESMTP",
        "nodeid": str(uuid.uuid4()),
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "tls_protocol_version": "TLSv1.3",
        "tls_peer_subject_name": ["CN=mx.google.com"],
        "provider_name": "google",
        "session_id": str(uuid.uuid4()),
    }


def body(*records: dict, array: bool = False) -> bytes:
    """What kumod's log hook posts: one record as an object, several (or, with
    ``array``, one) as an array of them; serde_json's compact form."""
    value = records[0] if len(records) == 1 and not array else list(records)
    return json.dumps(value, separators=(",", ":")).encode()
