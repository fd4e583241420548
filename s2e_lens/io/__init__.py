"""Files: atomic writes with the project's safety rules, safetensors + JSON. Imports nothing
of s2e_lens but ``errors`` and ``version``."""
