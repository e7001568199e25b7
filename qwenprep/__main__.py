from __future__ import annotations

from qwenprep.cli import main

if __name__ == "__main__":
    main()
