"""The operations the commands and the API run: patch, overlays, revert, fetch, the demo."""
