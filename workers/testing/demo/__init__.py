"""``reservations demo``: the whole system end to end on the local services.

* ``scenario`` decides, purely and from a seed, what happens to every reservation: which actions
  a producer publishes and in which order, what "another agent" or TaskRouter does meanwhile,
  which faults the emulator injects, and the outcome each action should get;
* ``services`` checks that PostgreSQL and RabbitMQ answer (saying what to start if not) and
  makes the demo a private RabbitMQ vhost;
* ``lanes`` plays each reservation's script through the real producer and the emulator's admin API;
* ``checks`` reads the ledger, the emulator's log and counters and the dead-letter queue
  afterwards, and decides whether anything was lost (``results`` holds what it found);
* ``runner`` starts and stops everything; ``command`` is the command and its output.
"""
