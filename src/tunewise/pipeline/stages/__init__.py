"""Pipeline stages, one module per stage, each registering itself with the runner.

The stage modules are thin: they read the config section and earlier artifacts, call the
library function that does the work (tunewise.data.ingest, tunewise.data.curate, ...), and write artifacts.
"""
