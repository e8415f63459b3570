"""DeviceCheck: the servicer, its fast path, the outcome tables and the Cython batch kernel."""
