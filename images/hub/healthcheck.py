"""HEALTHCHECK of the hub and gateway images: GET URL answers 200."""

import sys
import urllib.request

url = sys.argv[1]
try:
    with urllib.request.urlopen(url, timeout=4) as r:  # noqa: S310  (a fixed local URL)
        sys.exit(0 if r.status == 200 else 1)
except OSError as e:
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
