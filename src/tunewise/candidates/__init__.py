"""The candidate contract and registry, and every candidate: classic, prompted, API, fine-tuned, ensemble."""
