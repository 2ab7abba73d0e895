"""The events stream of the real daemon: every change, in order; a stuck reader costs nothing."""

import json
import socket
import threading


from harness import Daemon


def read_events(stream_lines, wanted):
    """Read event objects until ``wanted`` events (names) have been seen in order."""
    seen = []
    for line in stream_lines:
        if not line.strip():
            continue
        event = json.loads(line)
        seen.append(event)
        names = [e["event"] for e in seen]
        if all(name in names for name in wanted) and _in_order(names, wanted):
            return seen
    raise AssertionError(f"stream ended; saw {[e['event'] for e in seen]}")


def _in_order(names, wanted):
    it = iter(names)
    return all(name in it for name in wanted)


def test_changes_arrive_in_order_with_generations(tmp_path):
    d = Daemon(tmp_path)
    try:
        d.start()
        with d.client() as watcher, watcher.stream("GET", "/api/events/v1") as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = response.iter_lines()
            hello = json.loads(next(lines))
            assert hello["event"] == "hello" and hello["generation"] == 1
            a = d.post("/api/admin/suspend/v1", json={"domain": "a.example", "reason": "r"}).json()["id"]
            d.request = None
            with d.client() as c:
                c.request("DELETE", "/api/admin/suspend/v1", json={"id": a})
                short = c.post(
                    "/api/admin/suspend/v1", json={"domain": "b.example", "reason": "r", "duration": "1s"}
                ).json()["id"]
                c.post("/api/admin/queues/q.example/pause", json={"reason": "ops"})
                c.post("/api/admin/queues/q.example/resume")
            events = read_events(
                lines,
                ["suspension_added", "suspension_removed", "suspension_added", "queue_paused",
                 "queue_resumed", "suspension_expired"],
            )
        names = [e["event"] for e in events]
        assert names[:5] == ["suspension_added", "suspension_removed", "suspension_added", "queue_paused", "queue_resumed"]
        assert events[0]["id"] == a and events[0]["domain"] == "a.example"
        assert events[1]["id"] == a
        assert events[-1]["event"] == "suspension_expired" and events[-1]["id"] == short
        generations = [e["generation"] for e in events]
        assert generations == sorted(generations) and len(set(generations)) == len(generations)
        assert all(e["at"].endswith("Z") for e in events)
        # the expiry was announced when it happened, and the decision agrees
        assert d.get("/api/check/v1", params={"queue": "b.example"}).json()["deliver"] is True
    finally:
        d.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_consumer_that_never_reads_is_cut_off_and_others_are_served(tmp_path):
    d = Daemon(tmp_path)
    try:
        d.start()
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(d.admin))
        stuck.sendall(b"GET /api/events/v1 HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads again
        before = rss_kib(d.proc.pid)

        errors = []

        def writer(worker):
            with d.client() as c:
                for n in range(200):
                    r = c.post(
                        "/api/admin/suspend/v1",
                        json={"domain": f"w{worker}-{n}.example", "reason": "load", "duration": "1h"},
                    )
                    if r.status_code != 200:
                        errors.append(r.text)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        # another client is served all along
        with d.client() as c:
            while any(t.is_alive() for t in threads):
                assert c.get("/api/status/v1").status_code == 200
        for t in threads:
            t.join()
        assert errors == []
        assert d.status()["counts"]["suspensions"] == 1600
        grown = rss_kib(d.proc.pid) - before
        assert grown < 20 * 1024, f"RSS grew by {grown} KiB"
        assert '"event":"request"' in d.log_lines()
        # the stuck consumer was cut off: its connection is closed by the daemon
        stuck.settimeout(30)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        received = b""
        while chunk := stuck.recv(1 << 20):  # ends only at EOF: the daemon closed it
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert len(received) < 4 << 20  # what it was sent is bounded, not 1,600 events queued
        stuck.close()
    finally:
        d.close()
