"""Downloading what serving needs (download), planning it (plan), and --local-dir safety (local)."""
