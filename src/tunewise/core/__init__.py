"""Records, atomic artifacts, progress, sampling, text normalisers, statistics, price tables, perturbations."""
