"""Feature builders (batch) and the online feature path (real time), on Feast."""
