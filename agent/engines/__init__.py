"""Inference engines behind one protocol (:class:`agent.engines.base.Engine`)."""
