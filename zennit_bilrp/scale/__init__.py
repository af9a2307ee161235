"""Scaling BiLRP: cheaper estimators with k < h passes, the factor cache for many pairs, and the error metrics
that compare estimates with exact BiLRP."""
