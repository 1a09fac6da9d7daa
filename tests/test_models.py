"""Models: the packaged default, torchvision by name with a weights file, any nn.Module."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data

from cwox.core.devices import resolve_device
from cwox.core.models import from_module, load_model
from cwox.core.topk import TopKRule

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def test_default_model_sees_a_cat(default_classifier):
    clf = default_classifier
    assert clf.name == "efficientnet_lite0" and clf.n_classes == 1000
    assert clf.class_names[282] == "tiger cat" and len(set(clf.class_names)) == 1000
    x = clf.preprocess(Image.fromarray(data.chelsea()))
    assert x.shape == (3, 224, 224)
    # (rgb - 127) / 128 normalisation: values within about [-1, 1]
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    top = clf.probabilities(x[None])[0].topk(3).indices.tolist()
    assert set(top) == CAT_CLASSES


def test_default_layers_are_declared(default_classifier):
    clf = default_classifier
    assert clf.cluster_layer == "_conv_head"
    shapes = {}
    hooks = [clf.layer(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
             for n in (clf.cluster_layer, clf.class_layer)]
    try:
        clf.logits(torch.zeros(1, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    assert shapes[clf.cluster_layer][-1] == 7 and shapes[clf.class_layer][-1] == 14


def test_no_stdout_noise_from_loading(capfd):
    load_model("efficientnet_lite0", device="cpu")
    assert capfd.readouterr().out == ""


def test_torchvision_model_with_weights_file(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    clf = load_model("resnet18", weights=tmp_path / "r18.pt", device="cpu")
    assert clf.n_classes == 10 and clf.cluster_layer == "layer4" and clf.class_layer == "layer3"
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(clf.logits(x), net.eval()(x), atol=1e-5)


def test_torchvision_layers_found_by_probing(tmp_path):
    import torchvision

    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    clf = load_model("mobilenet_v3_small", weights=tmp_path / "m.pt", device="cpu")
    assert clf.cluster_layer.startswith("features") and clf.class_layer.startswith("features")
    assert clf.cluster_layer != clf.class_layer


def test_model_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="needs a weights file"):
        load_model("resnet18")
    with pytest.raises(ValueError, match="unknown model"):
        load_model("resnet_nonexistent")
    with pytest.raises(ValueError, match="not found"):
        load_model("resnet18", weights=tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        load_model("resnet18", weights=tmp_path / "junk.pt")
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_model("resnet34", weights=tmp_path / "r18.pt")


def test_any_module_with_probed_layers():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3),
    )
    clf = from_module(net, ["a", "b", "c"], input_size=32, device="cpu")
    assert clf.cluster_layer == "4" and clf.class_layer == "1"
    with pytest.raises(ValueError, match="no layer"):
        clf.layer("nope")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_topk_rules():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]])
    labels, probs, k = TopKRule(cum=0.9, max_k=3).apply(p)
    assert k.tolist() == [3, 1]  # 0.5+0.3 = 0.8 <= 0.9 needs a third; 0.97 > 0.9 alone
    assert labels.tolist() == [[0, 1, 2], [0, -1, -1]]
    assert probs[1].tolist() == pytest.approx([0.97, 0.0, 0.0])
    labels, _, k = TopKRule(k=2).apply(p)
    assert labels.tolist() == [[0, 1], [0, 1]] and k.tolist() == [2, 2]
    assert TopKRule(cum=0.5, max_k=1).apply(p)[2].tolist() == [1, 1]
    with pytest.raises(ValueError):
        TopKRule(k=0)
    with pytest.raises(ValueError):
        TopKRule(cum=1.5)


def test_cpu_allocator_is_tuned_and_can_be_turned_off():
    """Building a classifier applies cwox.core.devices' glibc settings unless CWOX_MALLOC_TUNING=0."""
    import subprocess
    import sys

    code = ("from cwox.core.models import load_model; from cwox.core import devices; "
            "load_model(device='cpu'); print(devices._tuned, devices.worker_allocator_env() != {})")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "CWOX_MALLOC_TUNING": "0"})
    expected_on = "True True" if sys.platform.startswith("linux") else "False True"
    assert on.stdout.split()[-2:] == expected_on.split()
    assert off.stdout.split()[-2:] == ["False", "False"]
