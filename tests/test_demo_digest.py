"""The demo photo's explanations did not change: each explainer's maps against a recorded digest.

The record (``tests/data/demo_digest.json``, written by ``python tests/demo_digest.py``
before the explainer interface was reworked) holds sha256 digests of every map stack and
of the diagnostics, with a fixed hand-made tree. On a CPU whose arithmetic matches the
recording's (same fingerprint) they must be bitwise identical; on another the maps must
match the record's 8 x 8 thumbnails within ``THUMB_ATOL`` (batch-shape rounding, see
``tests/test_cce.py``, moves a CCE map by up to 2e-3).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from demo_digest import RECORD, demo_photo, explain_all, fingerprint

#: Thumbnails are block means of maps in roughly [-1, 1]; rounding noise is far below this.
THUMB_ATOL = 1e-2


@pytest.mark.slow
def test_demo_explanations_match_the_recorded_digest(default_classifier):
    recorded = json.loads(RECORD.read_text())
    photo = demo_photo()
    same_arithmetic = fingerprint(default_classifier, photo) == recorded["fingerprint"]
    now = explain_all(default_classifier, photo)
    assert set(now) == set(recorded["explainers"])
    for name, want in recorded["explainers"].items():
        got = now[name]
        assert (got["classes"], got["clusters"]) == (want["classes"], want["clusters"]), name
        assert set(got["extra_maps"]) == set(want["extra_maps"]), name
        if same_arithmetic:
            for key in ("cluster_maps", "class_maps", "extra_maps", "diagnostics"):
                assert got[key] == want[key], f"{name}: {key} changed"
        else:
            for key, thumbs in want["thumbs"].items():
                np.testing.assert_allclose(got["thumbs"][key], thumbs, atol=THUMB_ATOL, err_msg=f"{name}: {key}")
