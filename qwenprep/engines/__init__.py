"""Engine-specific data that qwenprep keeps for when the engine itself cannot be asked."""
