"""``reservations demo``: the whole system end to end on the local services.

``scenario`` decides, purely and from a seed, what happens to every reservation (which actions a
producer publishes, in which order, what "another agent" or TaskRouter does meanwhile, which
faults the emulator injects, and the outcome each action should get); ``runner`` starts the
services, plays the scenario through the real broker, worker and emulator, and checks that
nothing was lost; ``workers.cli.demo`` is the command and its output.
"""
