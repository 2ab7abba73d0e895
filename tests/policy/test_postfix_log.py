"""Postfix mail log lines joined into kumod-shaped outcomes: the pure reader."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from sluice.policy import log_record
from sluice.policy.postfix_log import Answer, Joiner, encode_records, login_tenant, parse_answer

UTC = timezone.utc
# the moment the lines are read; the traditional lines below are a few minutes before it
NOW = datetime(2026, 12, 3, 12, 55, tzinfo=UTC).timestamp()

SMTPD = "Dec 03 12:51:14 mx postfix/smtpd[9582]: 9D92520C18E: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username={login}"
DEFERRED = (
    "Dec 03 12:51:15 mx postfix/smtp[9587]: 9D92520C18E: to=<u@gmail.example>, relay=mx[192.0.2.1]:25, "
    "delay=0.05, delays=0.02/0.02/0/0.02, dsn=4.7.28, status=deferred (host mx[192.0.2.1] said: "
    "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of 421 4.7.28 unsolicited mail. "
    "(in reply to RCPT TO command))"
)
REMOVED = "Dec 03 12:51:16 mx postfix/qmgr[9580]: 9D92520C18E: removed"


def joiner(**kw) -> Joiner:
    return Joiner(zone=kw.pop("zone", UTC), **kw)


def test_a_deferral_is_joined_to_its_messages_sasl_login():
    j = joiner()
    assert j.feed(SMTPD.format(login="acme"), NOW) is None
    record = j.feed(DEFERRED, NOW)
    assert record == log_record.Record(
        type="TransientFailure",
        recipient="u@gmail.example",
        queue="acme@gmail.example",
        response=log_record.Response(
            code=421,
            content="[192.0.2.1] Our system has detected an unusual rate of\nunsolicited mail.",
            enhanced_code=log_record.EnhancedCode(4, 7, 28),
        ),
        timestamp=int(datetime(2026, 12, 3, 12, 51, 15, tzinfo=UTC).timestamp()),
        event_time=datetime(2026, 12, 3, 12, 51, 15, tzinfo=UTC),
    )
    assert j.counts.outcomes == 1 and j.counts.unreadable == 0


def test_the_records_are_what_publish_log_v1_reads():
    """Encoded, the batch decodes as the daemon decodes kumod's records: same tenant, same line."""
    j = joiner()
    j.feed(SMTPD.format(login="acme@example.net"), NOW)  # the realm goes, as at the policy socket
    body = encode_records([j.feed(DEFERRED, NOW), j.feed(DEFERRED.replace("deferred", "bounced"), NOW)])
    assert isinstance(msgspec.json.decode(body), list)
    batch = log_record.decode(body)
    assert batch.records == 2 and len(batch.outcomes) == 2
    first = batch.outcomes[0]
    assert first.queue.tenant == "acme" and first.queue.domain == "gmail.example"
    assert first.domains == ("gmail.example",)
    assert first.response == (
        "421 4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail."
    )
    assert first.at == datetime(2026, 12, 3, 12, 51, 15, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "tag",
    ["postfix/smtp", "postfix/lmtp", "postfix/relay/smtp", "postfix-out/smtp", "postfix-out/relay/smtp"],
)
def test_delivery_agents_of_every_instance_and_service(tag):
    j = joiner()
    j.feed(SMTPD.format(login="acme").replace("postfix/smtpd", "postfix-out/submission/smtpd"), NOW)
    record = j.feed(DEFERRED.replace("postfix/smtp", tag), NOW)
    assert record is not None and record.queue == "acme@gmail.example"


@pytest.mark.parametrize(
    "tag", ["postfix/smtpd", "postfix/cleanup", "postfix/local", "dovecot/smtp", "smtp", "opendkim"]
)
def test_other_programs_status_lines_are_not_outcomes(tag):
    j = joiner()
    assert j.feed(DEFERRED.replace("postfix/smtp", tag), NOW) is None
    assert j.counts.outcomes == 0 and j.counts.unreadable == 0


@pytest.mark.parametrize(
    "queue_id",
    [
        "9D92520C18E",  # short: microseconds and inode, hexadecimal
        "4ABC123",
        "3Pt2mN2VXxznjll",  # long (enable_long_queue_ids): time, 'z', inode
        "4fTfXz2Lk8zCdvY",  # a 'z' inside the time part too
    ],
)
def test_short_and_long_queue_ids(queue_id):
    j = joiner()
    j.feed(SMTPD.format(login="acme").replace("9D92520C18E", queue_id), NOW)
    record = j.feed(DEFERRED.replace("9D92520C18E", queue_id), NOW)
    assert record is not None and record.queue == "acme@gmail.example"


@pytest.mark.parametrize(
    "answer, code, enhanced, content",
    [
        ("421 4.7.28 rate limited (in reply to RCPT TO command)", 421, (4, 7, 28), "rate limited"),
        ("421-4.7.0 [TS04] Messages from 192.0.2.1 deferred 421 4.7.0 see https://senders.yahoo.com/",
         421, (4, 7, 0), "[TS04] Messages from 192.0.2.1 deferred\nsee https://senders.yahoo.com/"),
        ("550-5.1.1 The email account that you tried to reach does not exist. 550-5.1.1 Please try "
         "550 5.1.1 again - gsmtp (in reply to RCPT TO command)",
         550, (5, 1, 1), "The email account that you tried to reach does not exist.\nPlease try\nagain - gsmtp"),
        ("421 Too many connections from your host (in reply to end of DATA command)",
         421, None, "Too many connections from your host"),
        ("452-first line 452-second line 452 last line", 452, None, "first line\nsecond line\nlast line"),
        ("554", 554, None, ""),
    ],
)
def test_answers_are_read_as_kumod_reads_a_response(answer, code, enhanced, content):
    assert parse_answer(answer) == Answer(code, enhanced, content)


@pytest.mark.parametrize("text", ["hello", "", "42 short", "(in reply to RCPT TO command)"])
def test_text_that_is_no_smtp_reply(text):
    assert parse_answer(text) is None


@pytest.mark.parametrize(
    "why",
    [
        "connect to mx[192.0.2.1]:25: Connection refused",
        "Host or domain name not found. Name service error for name=gmail.example type=MX: Host not found",
        "conversation with mx[192.0.2.1] timed out while receiving the initial server greeting",
        "delivery temporarily suspended: connect to mx[192.0.2.1]:25: Connection refused",
    ],
)
def test_postfixs_own_deferrals_have_no_answer_to_match(why):
    j = joiner()
    line = DEFERRED[: DEFERRED.index("status=deferred (") + len("status=deferred (")] + why + ")"
    assert j.feed(line, NOW) is None
    assert j.counts.outcomes == 0 and j.counts.unreadable == 0


def test_refused_to_talk_is_the_remotes_answer():
    j = joiner()
    line = DEFERRED.replace("said: 421-4.7.28", "refused to talk to me: 421-4.7.28")
    assert j.feed(line, NOW).response.code == 421


def test_a_message_without_a_known_login_is_posted_for_its_domain():
    j = joiner()
    assert j.feed(DEFERRED, NOW).queue == "gmail.example"
    j.feed(SMTPD.format(login="a:b"), NOW)  # no queue name can hold it as a tenant
    assert j.feed(DEFERRED, NOW).queue == "gmail.example"
    unauthenticated = "Dec 03 12:51:14 mx postfix/smtpd[1]: 9D92520C18E: client=localhost[127.0.0.1]"
    j.feed(unauthenticated, NOW)
    assert j.feed(DEFERRED, NOW).queue == "gmail.example"


def test_removed_forgets_the_tenant():
    j = joiner()
    j.feed(SMTPD.format(login="acme"), NOW)
    assert j.feed(DEFERRED, NOW).queue == "acme@gmail.example"
    j.feed(REMOVED, NOW)
    assert j.tenants == {}
    assert j.feed(DEFERRED, NOW).queue == "gmail.example"


def test_the_table_is_bounded_and_the_oldest_is_forgotten_first():
    j = joiner(max_queue_ids=3)
    for n in range(5):
        j.feed(SMTPD.format(login=f"t{n}").replace("9D92520C18E", f"ABCDEF{n}"), NOW)
    assert j.tenants == {"ABCDEF2": "t2", "ABCDEF3": "t3", "ABCDEF4": "t4"}
    assert j.counts.forgotten == 2


def test_a_joiner_resumes_from_the_tenants_a_previous_one_kept():
    first = joiner()
    first.feed(SMTPD.format(login="acme"), NOW)
    again = joiner(tenants=first.tenants.items())
    assert again.feed(DEFERRED, NOW).queue == "acme@gmail.example"


@pytest.mark.parametrize(
    "stamp, expected",
    [
        ("Dec 03 12:51:15", datetime(2026, 12, 3, 12, 51, 15, tzinfo=UTC)),
        ("Dec  3 12:51:15", datetime(2026, 12, 3, 12, 51, 15, tzinfo=UTC)),  # syslog's space-padded day
        ("Dec 03 12:51:15.250000", datetime(2026, 12, 3, 12, 51, 15, tzinfo=UTC)),
        ("Dec 04 10:00:00", datetime(2026, 12, 4, 10, 0, tzinfo=UTC)),  # less than a day ahead: clock skew
        ("Dec 31 23:59:59", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),  # ahead: last year's
        ("2026-12-03T10:00:00.123456+00:00", datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-12-03T11:00:00.5+01:00", datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2026-12-03T10:00:00Z", datetime(2026, 12, 3, 10, 0, tzinfo=UTC)),
    ],
)
def test_line_times(stamp, expected):
    j = joiner()
    record = j.feed(DEFERRED.replace("Dec 03 12:51:15", stamp), NOW)
    assert record.event_time == expected
    assert record.timestamp == int(expected.timestamp())


def test_traditional_times_are_in_the_given_zone():
    zone = timezone(timedelta(hours=2))
    record = joiner(zone=zone).feed(DEFERRED, NOW)
    assert record.event_time == datetime(2026, 12, 3, 10, 51, 15, tzinfo=UTC)


def test_a_new_years_eve_line_read_just_after_midnight_is_last_years():
    just_after = datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC).timestamp()
    record = joiner().feed(DEFERRED.replace("Dec 03 12:51:15", "Dec 31 23:59:58"), just_after)
    assert record.event_time == datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "Dec 03 12:51:15 mx",
        "Xyz 03 12:51:15 mx postfix/smtp[1]: 9D92520C18E: to=<u@gmail.example>, status=deferred (host x said: 421 x)",
        DEFERRED.replace("Dec 03 12:51:15", "Feb 30 12:51:15"),  # no such day
        DEFERRED.replace("<u@gmail.example>", "<gmail.example>"),  # no local part
        DEFERRED.replace("<u@gmail.example>", "<u@bad domain.example>"),
        DEFERRED.replace("Dec 03 12:51:15", "1970-01-01T00:00:00Z"),  # no time the daemon takes
        "\x00\x01\x02",
    ],
)
def test_lines_it_cannot_read_are_skipped_and_counted(line):
    j = joiner()
    assert j.feed(line, NOW) is None
    assert j.counts.unreadable == 1 and j.counts.outcomes == 0


def test_other_lines_pass_without_being_counted_unreadable():
    j = joiner()
    lines = [
        "Dec 03 12:51:14 mx postfix/smtpd[9582]: connect from localhost[127.0.0.1]",
        "Dec 03 12:51:14 mx postfix/cleanup[9586]: 9D92520C18E: message-id=<x@y>",
        "Dec 03 12:51:14 mx postfix/qmgr[9580]: 9D92520C18E: from=<a@b.example>, size=327, nrcpt=1 (queue active)",
        "Dec 03 12:51:14 mx postfix/smtp[9587]: 9D92520C18E: to=<u@gmail.example>, relay=x, status=sent (250 ok)",
        "Dec 03 12:51:14 mx postfix/smtpd[9582]: NOQUEUE: reject: RCPT from x[1.2.3.4]: 450 4.7.1 <u@x>: held",
        "Dec 03 12:51:14 mx dovecot: imap-login: Login: user=<acme>",
        "",
    ]
    assert [j.feed(line, NOW) for line in lines] == [None] * len(lines)
    assert j.counts.unreadable == 0 and j.counts.lines == len(lines) - 1


@pytest.mark.parametrize(
    "login, strip_realm, tenant",
    [
        ("acme", True, ("acme", None)),
        ("acme@example.net", True, ("acme", None)),
        ("acme@example.net", False, ("", "acme@example.net")),
        ("news:acme", True, ("", "news:acme")),
        ("a b", True, ("", "a b")),
        ("", True, ("", None)),
    ],
)
def test_login_tenant_names_the_tenant_as_the_policy_socket_does(login, strip_realm, tenant):
    assert login_tenant(login, strip_realm) == tenant
