import sys

from model.config import ConfigError

from .harness import main

try:
    sys.exit(main())
except ConfigError as err:   # a bad --set / --run: the fields and their allowed values, no traceback
    sys.exit(f"invalid config: {err}")
