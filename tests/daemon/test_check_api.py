"""The check API of the real daemon: every hold kind, batches, and decisions that follow changes."""

from harness import Daemon

EP = "ep_550e8400e29b41d4a716446655440000"
FILES = {
    "10-a.toml": f"""
        [[suspension]]
        domain = "gmail.com"
        reason = "421 4.7.28 rate limited"
        expires = 2099-01-01T00:00:00Z

        [[suspension]]
        queue_names = ["news:acme@example.com"]
        reason = "customer hold"

        [[queue]]
        name = "acme@example.com"
        paused = true
        reason = "warming up"
        parallelism = 3

        [[schedule]]
        id = "digest"
        cron = "0 9 * * MON"
        paused = true
        reason = "holiday"

        [[endpoint]]
        id = "{EP}"
        url = "https://hooks.example.com"
        """
}


def check(d, **params):
    return d.get("/api/check/v1", params=params).json()


def test_every_hold_kind(tmp_path):
    d = Daemon(tmp_path, files=FILES)
    try:
        d.start()
        gmail = check(d, queue="acme@Gmail.com")
        assert gmail["deliver"] is False and gmail["queue"] == "acme@gmail.com"
        assert [(h["kind"], h["reason"], h["expires"], h["source"]) for h in gmail["holds"]] == [
            ("suspension", "421 4.7.28 rate limited", "2099-01-01T00:00:00Z", "10-a.toml:1")
        ]
        assert gmail["retry_after"] > 0
        both = check(d, queue="news:acme@example.com")
        assert [h["kind"] for h in both["holds"]] == ["suspension"]
        paused = check(d, queue="acme@example.com")
        assert paused["holds"][0]["kind"] == "queue_pause" and paused["parallelism"] == 3
        assert paused["retry_after"] is None
        assert check(d, queue="other.example") == {
            "queue": "other.example", "deliver": True, "holds": [], "retry_after": None, "generation": 1,
        }
        schedule = check(d, schedule="digest")
        assert schedule["run"] is False and schedule["holds"][0]["reason"] == "holiday"
        assert check(d, endpoint=EP)["deliver"] is True
        assert d.get("/api/check/v1", params={"schedule": "nope"}).json()["error"]["code"] == "SCHEDULE_NOT_FOUND"
        r = d.get("/api/check/v1", params={"queue": "bad name"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_QUEUE_NAME"
        assert d.get("/api/check/v1").status_code == 400
    finally:
        d.close()


def test_batch_with_invalid_items(tmp_path):
    d = Daemon(tmp_path, files=FILES)
    try:
        d.start()
        body = d.post("/api/check/v1", json={"queues": ["gmail.com", "bad name", "x.example", "@"]}).json()
        assert body["generation"] == 1
        results = body["results"]
        assert [r.get("deliver") for r in results] == [False, None, True, None]
        assert results[1] == {
            "queue": "bad name",
            "error": {"code": "INVALID_QUEUE_NAME", "message": "domain 'bad name' contains a space"},
        }
        assert results[3]["error"]["code"] == "INVALID_QUEUE_NAME"
        r = d.post("/api/check/v1", json={"queues": "gmail.com"})
        assert r.status_code == 400
    finally:
        d.close()


def test_decisions_follow_file_edits_and_admin_calls(tmp_path):
    d = Daemon(tmp_path, files=FILES)
    try:
        d.start()
        assert check(d, queue="yahoo.com")["deliver"] is True
        d.write("20-b.toml", '[[suspension]]\ndomain = "yahoo.com"\nreason = "file edit"\n')
        while d.generation() == 1:
            d.notify.wait_for("READY=1")
        after_edit = check(d, queue="yahoo.com")
        assert after_edit["deliver"] is False and after_edit["holds"][0]["reason"] == "file edit"
        ident = d.post("/api/admin/suspend/v1", json={"domain": "aol.com", "reason": "api"}).json()["id"]
        held = check(d, queue="aol.com")  # right after the answer: no wait
        assert held["deliver"] is False and held["holds"][0]["id"] == ident
        with d.client() as c:
            c.request("DELETE", "/api/admin/suspend/v1", json={"id": ident})
        assert check(d, queue="aol.com")["deliver"] is True
    finally:
        d.close()
