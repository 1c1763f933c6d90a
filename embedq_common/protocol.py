"""The worker protocol's one shared name: the media type of a raw results post.

A results body in this type is one line of JSON (the fields of the JSON body, each result
giving its vector's length in `bytes` instead of an `embedding`), a newline, then the
vectors' raw little-endian float32 bytes back to back, in the results' order.
"""

from __future__ import annotations

RESULTS_TYPE = "application/x-embedq-results"
