"""Where an action enters and leaves RabbitMQ: every wire name (``topology``), the intake consumer
(``intake``), confirmed publishing and the hand-off to the apply task (``publishing``), dead letters
(``dead_letters``) and the producer client for other Python services (``producer``)."""
