"""Circuit breakers shared by the cluster, and an HTTP client behind one."""
