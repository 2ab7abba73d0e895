"""Every acknowledged change survives a SIGKILL at any instant."""

import threading

import httpx

from harness import Daemon


def test_sigkill_mid_stream_loses_no_acknowledged_change(tmp_path):
    d = Daemon(tmp_path)
    acknowledged: list[str] = []
    stop = threading.Event()
    enough = threading.Event()

    def writer(worker: int) -> None:
        with d.client() as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = client.post(
                        "/api/admin/suspend/v1",
                        json={"domain": f"w{worker}-{n}.example", "reason": "load", "duration": "1h"},
                    )
                except httpx.TransportError:
                    return  # the daemon died under us: that request was never acknowledged
                if r.status_code == 200:
                    acknowledged.append(r.json()["id"])
                    if len(acknowledged) >= 60:
                        enough.set()

    try:
        d.start()
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        # kill once a good number of changes is acknowledged, while more are in flight
        assert enough.wait(30)
        d.kill()
        stop.set()
        for t in threads:
            t.join()
        assert len(acknowledged) >= 60
        d.start()
        listed = {s["id"] for s in d.get("/api/admin/suspend/v1").json()}
        missing = set(acknowledged) - listed
        assert not missing, f"{len(missing)} acknowledged changes lost"
        leftovers = [p.name for p in (d.state / "runtime").iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []  # a torn write is cleaned up at start
    finally:
        stop.set()
        d.close()
