"""The plain-JSON intake: the wire contract's schema, the validation of each message, and the
consumer step that runs inside the Celery worker.

- :mod:`workers.intake.schema`: the JSON Schema, generated from the parameter catalogue (pure).
- :mod:`workers.intake.validation`: message bytes and properties -> accepted action or rejection (pure).
- :mod:`workers.intake.step`: the Celery consumer bootstep on ``reservations.actions`` (the edge).
"""
