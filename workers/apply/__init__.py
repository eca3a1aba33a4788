"""Where an action is carried out: the If-Match protocol (``applier``) and the Celery task that
runs it (``task``)."""
