"""The engine: exact BiLRP on torch and Zennit alone (similarities, heads, pooling, the forward-and-propagate
session, results). Nothing here imports Captum, matplotlib or the analysis modules."""
