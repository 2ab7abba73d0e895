"""Prometheus metrics: one registry per daemon, no module-level state.

Counters are bumped where things happen (requests in the router, decisions
in the check routes and the Postfix server, automation's records, matches
and holds in ``automation.py``, reloads through the events listener); gauges of the policy in force are read from the snapshot at
scrape time, so they can never drift from it. The two counters bumped on
every request are plain integers in the event loop's thread, turned into
counter families at scrape time: a prometheus_client child takes a lock per
bump, which a request can do without. The Postfix server's connections,
each in a thread of its own, count their decisions through
``DecisionCounts.count``, under its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .current import Current
from .serving import Slots

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _PolicyCollector(Collector):
    def __init__(self, current: Current, clock: Callable[[], float]) -> None:
        self.current = current
        self.clock = clock

    def collect(self) -> Iterator[Any]:
        snapshot = self.current.snapshot
        counts = snapshot.counts(self.clock())
        holds = GaugeMetricFamily(
            "sluice_active_holds", "Holds in force, by kind", labels=["kind"]
        )
        holds.add_metric(["suspension"], counts["suspensions"])
        holds.add_metric(["queue_pause"], counts["paused_queues"])
        holds.add_metric(["schedule_pause"], counts["paused_schedules"])
        holds.add_metric(["endpoint_pause"], counts["paused_endpoints"])
        yield holds
        yield GaugeMetricFamily(
            "sluice_policy_generation", "Generation of the policy in force", value=snapshot.generation
        )
        last = self.current.last_reload
        yield GaugeMetricFamily(
            "sluice_last_reload_ok",
            "1 if the last reload was applied, 0 if it failed",
            value=1 if last is None or last.ok else 0,
        )
        yield GaugeMetricFamily(
            "sluice_degraded", "1 while runtime state cannot be changed", value=int(self.current.degraded)
        )
        yield GaugeMetricFamily(
            "sluice_uptime_seconds", "Seconds since the daemon started", value=time.time() - self.current.started
        )


class DecisionCounts:
    """The decisions made in one place: two plain integers, read at scrape time.

    The event loop adds to its own counts directly; the policy service's
    connections, each in a thread of its own, through ``count``.
    """

    __slots__ = ("deliver", "hold", "_lock")

    def __init__(self) -> None:
        self.deliver = 0
        self.hold = 0
        self._lock = threading.Lock()

    def count(self, *, deliver: bool) -> None:
        """One decision, counted from any thread."""
        with self._lock:
            if deliver:
                self.deliver += 1
            else:
                self.hold += 1


class _HotCounters(Collector):
    """Requests by route, method and status; decisions by source and outcome."""

    def __init__(self) -> None:
        self.answered: dict[tuple[str, str, int], int] = {}
        self.decided = {source: DecisionCounts() for source in ("http", "batch", "postfix")}

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "sluice_http_requests",
            "HTTP requests answered, by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in sorted(self.answered.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        decisions = CounterMetricFamily(
            "sluice_decisions",
            "Delivery decisions, by where they were asked and their outcome",
            labels=["source", "outcome"],
        )
        for source, counts in self.decided.items():
            decisions.add_metric([source, "deliver"], counts.deliver)
            decisions.add_metric([source, "hold"], counts.hold)
        yield decisions


class _AutomationCounters(Collector):
    """Log records received and outcomes among them; per rule, outcomes matched and holds made."""

    def __init__(self) -> None:
        self.records = 0
        self.failures = 0
        self.matched: dict[str, int] = {}
        self.held: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Any]:
        received = CounterMetricFamily(
            "sluice_automation_records",
            "Delivery log records received for automation, and the failures among them",
            labels=["kind"],
        )
        received.add_metric(["received"], self.records)
        received.add_metric(["failure"], self.failures)
        yield received
        matched = CounterMetricFamily(
            "sluice_automation_matched", "Failure records an automation rule matched, by rule", labels=["rule"]
        )
        for rule, count in sorted(self.matched.items()):
            matched.add_metric([rule], count)
        yield matched
        held = CounterMetricFamily(
            "sluice_automation_holds",
            "Holds an automation rule made or extended, by rule",
            labels=["rule", "change"],
        )
        for (rule, change), count in sorted(self.held.items()):
            held.add_metric([rule, change], count)
        yield held

class _ConnectionCollector(Collector):
    """Open, evicted and refused connections of each service, read from its slots."""

    def __init__(self) -> None:
        self.slots: list[Slots] = []
        self.trimmer: Any = None  # memory.Trimmer, once the services are made

    def collect(self) -> Iterator[Any]:
        families = [
            (GaugeMetricFamily, "sluice_connections", "Open connections, by listener", "open"),
            (CounterMetricFamily, "sluice_connections_evicted",
             "Connections closed to make room for a new one (see README: connection limits)", "evicted"),
            (CounterMetricFamily, "sluice_connections_refused",
             "New connections refused: every slot taken, none waiting to give way", "refused"),
            (CounterMetricFamily, "sluice_connections_closed", "Connections ended", "closed"),
        ]
        for family, name, documentation, attribute in families:
            metric = family(name, documentation, labels=["listener"])
            for slots in self.slots:
                metric.add_metric([slots.name], getattr(slots, attribute))
            yield metric
        if self.trimmer is not None:
            yield CounterMetricFamily(
                "sluice_memory_trims",
                "Times free memory was handed back after a burst of connections closed",
                value=self.trimmer.trims,
            )


class Metrics:
    def __init__(self, current: Current, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reloads = Counter(
            "sluice_reloads", "Policy reloads, by result", ["result"], registry=self.registry
        )
        self.changes = Counter(
            "sluice_changes", "Policy changes announced, by event", ["event"], registry=self.registry
        )
        self.registry.register(_PolicyCollector(current, clock))
        self._counts = _HotCounters()
        self.registry.register(self._counts)
        self._automation = _AutomationCounters()
        self.registry.register(self._automation)
        self._connections = _ConnectionCollector()
        self.registry.register(self._connections)

    def count_connections(self, slots: Slots) -> None:
        """Report the connections of a service."""
        self._connections.slots.append(slots)

    def count_trims(self, trimmer: Any) -> None:
        self._connections.trimmer = trimmer

    def answered(self, route: str, method: str, status: int) -> None:
        """Count one HTTP answer."""
        counts = self._counts.answered
        key = (route, method, status)
        counts[key] = counts.get(key, 0) + 1

    def decided(self, source: str, deliver: bool, count: int = 1) -> None:
        counts = self._counts.decided[source]
        if deliver:
            counts.deliver += count
        else:
            counts.hold += count

    def decisions(self, source: str) -> DecisionCounts:
        """The counts of ``source``, for a server that bumps them itself."""
        return self._counts.decided[source]

    def automation_received(self, records: int, failures: int) -> None:
        self._automation.records += records
        self._automation.failures += failures

    def automation_matched(self, rule: str, count: int) -> None:
        """``rule``: where it is written (``file:line``)."""
        matched = self._automation.matched
        matched[rule] = matched.get(rule, 0) + count

    def automation_held(self, rule: str, change: str) -> None:
        """A hold ``rule`` made (``change`` "added") or extended ("extended")."""
        held = self._automation.held
        held[rule, change] = held.get((rule, change), 0) + 1

    def on_event(self, message: dict[str, Any]) -> None:
        """Events listener: reloads and changes, counted as they are announced."""
        event = message["event"]
        if event == "reload_applied":
            self.reloads.labels("applied").inc()
        elif event == "reload_failed":
            self.reloads.labels("failed").inc()
        else:
            self.changes.labels(event).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
