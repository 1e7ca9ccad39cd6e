"""Health: each worker's health server and monitor, beat's probe, the status collector."""
