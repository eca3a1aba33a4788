"""Test support: real services (PostgreSQL, RabbitMQ), real worker processes."""
