"""Research analyses on top of the engine: evaluation scores, object-vs-context shares and the alignment study,
identically represented inputs (IRIs) with perceptual distances, neuron selection, critical paths and
feature-map reconstruction."""
