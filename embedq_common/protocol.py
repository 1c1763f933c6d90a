"""The worker protocol's shared names: the media type of a raw results post, and the path
of the worker channel.

A results body in this type is one line of JSON (the fields of the JSON body, each result
giving its vector's length in `bytes` instead of an `embedding`), a newline, then the
vectors' raw little-endian float32 bytes back to back, in the results' order. The worker
channel's frames are described in embedq_server/channel.py.
"""

from __future__ import annotations

RESULTS_TYPE = "application/x-embedq-results"
CHANNEL_PATH = "/worker/channel"
