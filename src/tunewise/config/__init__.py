"""The config file's sections and the per-check settings; reading and validating a config."""
