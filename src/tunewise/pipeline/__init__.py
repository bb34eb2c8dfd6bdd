"""The stage runner, the config precheck, tracking, and one module per pipeline stage."""
