"""The policy in force: one snapshot, swapped whole, and how the last reload went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sluice.policy.snapshot import Snapshot
from sluice.policy.times import rfc3339


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    at: float
    generation: int
    errors: tuple[str, ...] = ()
    changes: int = 0
    files: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "at": rfc3339(self.at, "seconds"),
            "generation": self.generation,
            "errors": list(self.errors),
            "changes": self.changes,
            "files": list(self.files),
        }


@dataclass
class Current:
    """Holder of the snapshot in force. Readers take ``current.snapshot`` once per request."""

    snapshot: Snapshot
    started: float = field(default_factory=time.time)
    last_reload: ReloadResult | None = None
    degraded: bool = False
    degraded_reason: str = ""
    # runtime state the store holds but cannot read now (a broken hand edit): where -> problem
    runtime_problems: dict[str, str] = field(default_factory=dict)

    def next_generation(self) -> int:
        return self.snapshot.generation + 1

    def swap(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def status_line(self, now: float) -> str:
        """The one-line status for systemd's STATUS=."""
        c = self.snapshot.counts(now)
        line = (
            f"generation {self.snapshot.generation}: {c['suspensions']} suspensions, "
            f"{c['paused_queues']} paused queues, {c['paused_schedules']} paused schedules, "
            f"{c['paused_endpoints']} paused endpoints"
        )
        if self.last_reload is not None and not self.last_reload.ok:
            first = self.last_reload.errors[0] if self.last_reload.errors else "unknown error"
            line += f"; last reload FAILED: {first}"
        if self.runtime_problems:
            first = next(iter(self.runtime_problems.values()))
            line += f"; {len(self.runtime_problems)} runtime file(s) invalid: {first}"
        if self.degraded:
            line += "; degraded"
        return line
