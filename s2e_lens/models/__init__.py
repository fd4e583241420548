"""Models: the registry of packaged models, architectures, loading (GGUF conversion, local
directories, the hub), identity, tokens and padding, export. Imports ``core`` and ``io``."""
