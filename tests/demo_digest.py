"""The demo photo's explanations, each registered explainer at small settings, as a digest.

Recorded once (``python tests/demo_digest.py``) before a refactor that must not change
what cwox computes, and checked by ``tests/test_demo_digest.py`` after it. The tree is a
FIXED hand-made one (:func:`cwox.hlta.tree.tree_from_groups`: the cats, the wigs), not
the default tree, so rebuilding the default tree does not move the digest.

Bit-for-bit equality holds only where the arithmetic is the same: a different CPU's
convolution kernels round differently (see ``tests/test_cce.py``). So the record also
holds an *arithmetic fingerprint* (the model's logits on the photo, in a batch of one and
of four) and small 8 x 8 thumbnails of every map: where the fingerprint matches, the maps
must be bitwise identical; elsewhere they must match the thumbnails within a tolerance.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

RECORD = Path(__file__).parent / "data" / "demo_digest.json"
#: Cats (tabby, tiger cat, Egyptian cat, lynx) and two neighbours of ImageNet's 900s.
GROUPS = ([281, 282, 285, 287], [904, 905])
#: Small but real settings per explainer (every part of each method runs).
SETTINGS: dict[str, dict[str, Any]] = {
    "gradcam": {},
    "rise": {"n_masks": 64, "batch_size": 16},
    "cce": {"iterations": 3, "n_counterfactuals": 2, "n_noise": 2, "batch_size": 8},
    "suny": {"layer": "_blocks.2", "n_causes": 4, "n_samples": 3, "batch_size": 32},
    "fgvce": {"max_steps": 4},  # + the photo-crop reference bank, for the contrast role
}


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _thumbs(maps: np.ndarray) -> list:
    """``n x 8 x 8`` block means of ``n x 224 x 224`` maps, as nested lists."""
    n, h, w = maps.shape
    return maps.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).round(6).tolist()


def fingerprint(classifier, photo) -> str:
    """The model's logits on ``photo`` alone and in a batch of four: same digest, same arithmetic."""
    import torch

    x = classifier.preprocess(photo)[None]
    with torch.no_grad():
        one = classifier.module(x).numpy()
        four = classifier.module(torch.cat([x, x.flip(-1), x.flip(-2), x.transpose(-1, -2)])).numpy()
    return _sha(one, four)


def explain_all(classifier, photo) -> dict[str, Any]:
    """Each explainer's CWOX-2s explanation of ``photo``: classes, map digests, thumbnails."""
    from cwox.hlta.tree import tree_from_groups
    from cwox.online.engine import Engine
    from cwox.online.explainers import get_explainer
    from cwox.pipelines.photos import photo_crop_bank

    tree = tree_from_groups(GROUPS, classifier.class_names)
    out: dict[str, Any] = {}
    for name, params in SETTINGS.items():
        params = dict(params)
        if name == "fgvce":
            params["reference_bank"] = photo_crop_bank(classifier)
        explainer = get_explainer(name, classifier, **({"seed": 0} if name in ("rise", "cce") else {}), **params)
        exp = Engine(classifier, tree, explainer, "cwox2s", top_k=5).explain(photo)
        extra = {k: np.asarray(v, dtype=np.float32) for k, v in sorted(exp.extra_maps.items())}
        out[name] = {
            "classes": [int(c) for c in exp.classes],
            "clusters": [[int(c) for c in g] for g in exp.clusters],
            "cluster_maps": _sha(exp.cluster_maps),
            "class_maps": _sha(exp.class_maps),
            "extra_maps": {k: _sha(v) for k, v in extra.items()},
            "diagnostics": hashlib.sha256(json.dumps(exp.diagnostics, sort_keys=True).encode()).hexdigest(),
            "thumbs": {"cluster_maps": _thumbs(exp.cluster_maps), "class_maps": _thumbs(exp.class_maps),
                       **{k: _thumbs(v.reshape(-1, *v.shape[-2:])) for k, v in extra.items()}},
        }
    return out


def demo_photo():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())


def record(path: Path = RECORD) -> dict[str, Any]:
    from cwox.core.models import load_model

    clf = load_model(device="cpu")
    photo = demo_photo()
    doc = {"fingerprint": fingerprint(clf, photo), "explainers": explain_all(clf, photo)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    print(json.dumps({k: v["cluster_maps"] for k, v in record()["explainers"].items()}, indent=1), file=sys.stdout)
