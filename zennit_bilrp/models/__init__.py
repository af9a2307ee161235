"""Shipped models and data: the offline demo encoder, the synthetic pair generator with its trained encoders, and
the small ResNet architecture they share (weights in ``data/``)."""
