"""A local TaskRouter Reservation API: the emulator our tests, demo and benchmarks run against.

Twilio offers no local TaskRouter, so we ship one (design doc, "The TaskRouter emulator"). It is
split by reason to change:

- ``model``: the immutable records (workspace, task, worker, reservation, transition).
- ``store``: the in-memory model and its rules (versions, the state machine, the transition log).
- ``counters``: how many requests of each kind reached the emulator, per reservation and overall.
- ``faults``: deterministic fault injection (latency, 429, 5xx, dropped connections, 412 storms).
- ``wire``: TaskRouter's wire format (resource JSON, list envelope, error bodies, ETag headers).
- ``api`` and ``admin_api``: the HTTP routes (Twilio's, and the loopback-only ``/_emulator/`` ones).
- ``app``: the composition root that builds the aiohttp application.
- ``server``: running it (in-process on a thread for tests, or as a subprocess).
- ``admin``: a typed client of the admin API.

Events (ops/EMULATOR.md): ``events`` (the event record and its wire forms: Event Callback form,
CloudEvent, Events resource, signatures), ``hub`` (the store's listener, reservation timers, the
Event Streams sink), ``sender`` (the background deliveries and Twilio's retry rules),
``callback_faults`` (drop, duplicate, delay, reorder), ``events_api`` (the Workspace and Events
resources) and ``receiver`` (a recording HTTP receiver for tests).
"""
