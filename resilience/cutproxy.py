"""Moved to :mod:`resilience.testing.cutproxy` with the other test helpers; this path stays importable
and is the same module object (so patching either name patches both)."""

import sys

from resilience.testing import cutproxy as _module

sys.modules[__name__] = _module
