"""prefpipe: curate preference datasets from raw conversations.

The library computes; `flows/` wires it into Prefect. Nothing here imports prefect.
"""

__version__ = "0.1.0"
