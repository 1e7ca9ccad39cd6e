"""Import this module into a worker to turn the test recorder on there.

``celery -A proj worker -I resilience.testing.record`` (what the pytest
plugin's subprocess workers do): the worker then records each job's runs and
retries for the test (see :mod:`resilience.testing.recorder`).
"""

from resilience.testing import recorder

recorder.enable()
