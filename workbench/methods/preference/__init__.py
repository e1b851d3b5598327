"""Preference optimization: offline pairwise losses, reward models, online and self-play methods."""
