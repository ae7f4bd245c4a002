"""Trainers: one self-contained file per training method, each with its config section."""
