"""Insight: the bias probe and token attributions (explanations) of a classifier's answers.

May import the runtime, data, the model and the foundation; never training, serving, bulk or the command line.
"""
