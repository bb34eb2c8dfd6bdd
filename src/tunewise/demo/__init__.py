"""The demo data generator and the demo command."""
