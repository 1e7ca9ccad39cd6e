"""Publishing while Redis is unreachable: the guarded publish, the spool, deferred writes."""
