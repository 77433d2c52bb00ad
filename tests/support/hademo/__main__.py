"""python -m tests.support.hademo --config FILE

The shared config validator knows only the product's components, so hademo reads its
JSON config itself; everything else is the ordinary service skeleton.
"""

import argparse
import json
import logging
import sys

from .service import HADemo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.support.hademo")
    parser.add_argument("--config", required=True, help="JSON config written by the testbed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hademo %(levelname)s %(message)s")
    try:
        with open(args.config) as f:
            config = json.load(f)
        config["port"] = int(config["port"])
        for key in ("host", "data_dir"):
            if not isinstance(config.get(key), str):
                raise ValueError(f"{key}: missing or not a string")
    except (OSError, ValueError, KeyError) as exc:
        print(f"hademo: bad config: {exc}", file=sys.stderr)
        return 2
    HADemo(config).run()
    return 0


sys.exit(main())
