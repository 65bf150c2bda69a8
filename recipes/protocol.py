#!/usr/bin/env python
"""Run the three-arm protocol; the same as ``phenodiff protocol``, for ``accelerate launch``.

    accelerate launch recipes/protocol.py --config recipes/configs/protocol_phantom.yaml --seeds 3 --output-dir outputs/protocol-phantom

Generator training runs on the device accelerate selects (a GPU when there is one). The protocol itself
runs in one process: launch it without --multi_gpu.
"""

import sys

from phenodiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["protocol", *sys.argv[1:]]))
