"""Interoperability: the only place that imports Captum (the ``Attribution`` class, BiLRP from Captum's LRP, and
the gradient-based baselines that Captum users compare with)."""
