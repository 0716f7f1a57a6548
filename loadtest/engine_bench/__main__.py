"""The engine process of the engine benchmark: `python -m loadtest.engine_bench SPEC_JSON`."""

import json
import sys

from loadtest.engine_bench.config import EngineSpec
from loadtest.engine_bench.engines import child_main

child_main(EngineSpec(**json.loads(sys.argv[1])))
