"""failover: point DNS names at whichever server is up, with safe serials and verified reloads.

Layers: pure core (serial, template, hysteresis) -> validation (zonecheck) -> I/O (checks,
rewrite, notify, verify, state) -> engine (one cycle) -> cli (the only place that prints or
exits). Of mailmirror it uses only the state store, the default paths and the error base.
"""
