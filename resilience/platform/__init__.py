"""The wiring (the feature registry and install(app)) and the supervisor behind `resilience up` and `demo`."""
