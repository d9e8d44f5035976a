"""Evaluation: distribution metrics over embeddings, music checks against the prompt, cut alignment, QC.

Pure functions over arrays; the `videorobin evaluate` job runs them over a whole set of clips.
"""
