"""Resolving, caching and loading the embedded models (GGUF, safetensors, sentence encoders)."""
