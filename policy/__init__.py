"""sluice's policy core: pure, synchronous, no I/O beyond what callers hand in.

Modules:
    errors      the exception tree
    queue_name  parse, normalise and format ``[campaign:][tenant@]domain[!routing]``
    duration    humantime durations, as KumoMTA accepts them
    model       the policy objects, frozen and validated
    fields      mapping (TOML table or JSON object) -> object, every error collected
    files       TOML text -> entries, every error with file, line and key path
    index       hash lookups per suspension shape
    snapshot    files + runtime -> one immutable snapshot, and its decisions
    diff        what changed between two snapshots
"""
