"""Extensions of Zennit: composites (presets), canonizers, fast rules, layer access and the model guard that puts
every model back exactly as it was."""
