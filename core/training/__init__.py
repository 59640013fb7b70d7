"""Training: ``fit(cfg)`` trains any model of :data:`core.config.TRAINABLE_MODELS` into a run folder."""
