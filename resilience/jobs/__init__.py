"""A job's life: the task class, submission, the execution guard, retries, durable delayed runs,
idempotency keys, dead letters."""
