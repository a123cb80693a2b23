"""Continual methods: one object per method that the runner asks for everything it decides
(:mod:`eir.methods.base`)."""
