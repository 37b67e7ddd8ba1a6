"""Model engines behind one protocol (`pipeline.engines.base.Engine`)."""
