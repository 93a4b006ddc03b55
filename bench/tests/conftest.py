"""bench/'s Python modules are scripts, not a package: make `import targets` find them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
