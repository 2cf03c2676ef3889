"""Evaluating a model on the test set, comparing two, and the results table."""
