"""The method as pure tensors and types: the edit rule, plans, statistics, steering vectors,
contrastive sets, metrics, comparisons and the run type. Imports ``io`` (and ``errors``), never
model code."""
