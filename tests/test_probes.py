"""Per-layer probes (layerstats.py) against independent computations, a measured property of
plain and residual nets at initialisation, and the probe experiments (probes.py) end to end."""

import json

import pytest
import torch
from fakedata import pattern_images, write_mnist
from test_experiments import png_is_not_blank, png_size
from torch import nn

from resnetkit import probes
from resnetkit.cli import build_parser
from resnetkit.errors import UserError
from resnetkit.layerstats import LayerStats, init_gradients, layer_responses, response_layers
from resnetkit.registry import create_model
from resnetkit.rundir import read_metrics


def test_update_ratio_is_the_sgd_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    lr, wd = 0.1, 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    x, y = torch.randn(8, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    nn.functional.cross_entropy(model(x), y).backward()
    # The first SGD step, momentum or not, is w -= lr * (g + wd * w): so |Δw| / |w| = lr |g + wd w| / |w|.
    weights = [model[0].weight, model[3].weight]
    expected = [(lr * (w.grad + wd * w).norm() / w.norm()).item() for w in weights]
    grads, norms = [w.grad.norm().item() for w in weights], [w.norm().item() for w in weights]
    stats = LayerStats(model)
    stats.before_step()
    opt.step()
    row = stats.after_step()
    assert row["layers"] == ["0", "3"]
    assert row["update_ratio"] == pytest.approx(expected, rel=1e-5)
    assert row["grad_norm"] == pytest.approx(grads, rel=1e-6)
    assert row["weight_norm"] == pytest.approx(norms, rel=1e-6)  # the weights the step started from
    json.dumps(row)  # a layers.jsonl row
    with pytest.raises(RuntimeError):
        stats.after_step()  # each record needs its before_step


def test_a_layer_without_gradient_records_zero():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    model[0].weight.requires_grad_(False)  # as --freeze-backbone leaves the convs
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(4, 1, 6, 6)), torch.tensor([0, 1, 0, 1])).backward()
    stats = LayerStats(model)
    stats.before_step()
    opt.step()
    row = stats.after_step()
    assert row["grad_norm"][0] == 0.0 and row["update_ratio"][0] == 0.0
    assert row["grad_norm"][1] > 0 and row["update_ratio"][1] > 0


def test_plain_nets_send_the_first_layers_more_gradient_at_initialisation():
    # The article says shortcuts "propagate larger gradient to the first layers". Measured on
    # seeded nets at initialisation (one batch of 32 pattern images, training-mode BN), seeds
    # 0, 1, 2: the stem conv's gradient norm over the last conv's is 4783, 2678, 1570 in plain-56
    # and 6.7, 7.8, 4.5 in ResNet-56; the stem's gradient is 1452, 914, 676 in plain-56 against
    # 3.0, 3.8, 2.4 in ResNet-56. With BN after every conv the plain net's gradient *grows*
    # going back to the first layers (it does not vanish); the shortcuts keep it nearly level.
    # Plain-20 and ResNet-20: 11.1 and 2.5 (seed 0).
    x, y = pattern_images(32, 28, seed=0)
    x = torch.tensor(x, dtype=torch.float32)[:, None] / 255
    x, y = (x - x.mean()) / x.std(), torch.tensor(y, dtype=torch.long)
    plain = init_gradients("plain56", x, y, seed=0, in_chans=1)
    res = init_gradients("resnet56", x, y, seed=0, in_chans=1)
    assert plain["layers"] == res["layers"] and len(plain["layers"]) == 56  # 55 convs and fc
    first_over_last = {k: g["grad_norm"][0] / g["grad_norm"][-2] for k, g in (("plain", plain), ("res", res))}
    assert first_over_last["plain"] > 1000
    assert 1 < first_over_last["res"] < 20
    assert plain["grad_norm"][0] > 100 * res["grad_norm"][0]
    # The last layers see gradients of the same size in both (0.30 and 0.45).
    assert 0.2 < plain["grad_norm"][-2] / res["grad_norm"][-2] < 5


def test_response_layers_are_the_bn_after_each_3x3_conv():
    r20 = response_layers(create_model("resnet20"))
    names = [n for n, _ in r20]
    assert len(names) == 19  # the stem and 2 per block, 9 blocks (paper Fig. 7's 3x3 layers)
    assert names[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"] and names[-1] == "layer3.2.bn2"
    assert [n for n, _ in response_layers(create_model("plain20"))] == names
    r50 = [n for n, _ in response_layers(create_model("resnet50", num_classes=10))]
    assert len(r50) == 16 and all(n.endswith(".bn2") for n in r50)  # 7x7 stem: no 3x3 layer there


def test_layer_responses_match_a_direct_computation():
    torch.manual_seed(0)
    model = create_model("resnet20", blocks=(1, 1, 1), in_chans=1, num_classes=10)
    for m in model.modules():  # trained-looking BN: statistics and scales away from 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.2, 1.5)
    x = torch.randn(40, 1, 12, 12)
    y = torch.randint(0, 10, (40,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]  # uneven: 16, 16, 8
    got = layer_responses(model, batches)
    assert model.training  # left as found
    captured = {}
    layers = response_layers(model)

    def keep(name):
        def hook(_m, _i, out):  # returns None: a hook's return value would replace the output
            captured[name] = out.clone()  # the ReLU after some BNs works in place
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in layers]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    want = [captured[n].transpose(0, 1).reshape(captured[n].shape[1], -1).std(1, correction=0).mean().item()
            for n, _ in layers]
    assert got["layers"] == [n for n, _ in layers] and got["images"] == 40
    assert got["std"] == pytest.approx(want, rel=1e-4)
    assert got["error"] == pytest.approx((logits.argmax(1) != y).float().mean().item())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("probes") / "mnist", 1024, 256)


@pytest.fixture(scope="module")
def gradients_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("probes") / "grad"
    # fp32: bf16 is emulated, and many times slower, on CPUs without AVX-512 BF16 or AMX.
    result = probes.gradients(out, depths=[20], data="mnist", data_dir=str(mnist_dir), quick=True, quiet=True,
                              precision="fp32", command="resnetkit experiment gradients --quick --depths 20")
    return out, result


def test_quick_gradients_makes_every_file(gradients_run):
    out, result = gradients_run
    assert json.loads((out / "results.json").read_text()) == result
    readme = (out / "README.md").read_text()
    assert result["command"] in readme and all(c in readme for c in result["conclusion"])
    assert [m["model"] for m in result["models"]] == ["plain20", "resnet20"]
    w, h = png_size(out / "figure.png")
    assert w > 1000 and h > 500 and png_is_not_blank(out / "figure.png")
    for m in result["models"]:
        assert m["layers"] == 20 and m["first_layer"] == "conv1" and m["last_layer"] == "layer3.2.conv2"
        for key in ("grad_first_init", "grad_last_init", "grad_ratio_init", "update_ratio_end", "update_ratio_median"):
            assert m[key] > 0
    # 1024 images in batches of 32: 32 steps, a record every 10 from the first.
    rows = read_metrics(out / "runs" / "resnet20-seed0" / "layers.jsonl")
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert set(rows[0]) == {"step", "layers", "grad_norm", "weight_norm", "update_ratio"}
    assert rows[0]["layers"][0] == "conv1" and rows[0]["layers"][-1] == "fc"
    assert all(len(rows[0][k]) == 20 for k in ("grad_norm", "weight_norm", "update_ratio"))
    curves = result["curves"]["plain20"]
    assert curves["all_steps"] == [0, 10, 20, 30] and len(curves["grad_first_last"]) == 4
    assert curves["steps"][0] == 0 and len(curves["grad_norm"][0]) == 20


def test_responses_of_trained_runs_from_a_folder(gradients_run, tmp_path):
    source, _ = gradients_run  # its runs are finished training runs, as a degradation's are
    out = tmp_path / "resp"
    result = probes.responses(out, depths=[20], source=source, quiet=True, command="resnetkit experiment responses")
    assert json.loads((out / "results.json").read_text()) == result
    assert png_is_not_blank(out / "figure.png")
    by = {m["model"]: m for m in result["models"]}
    assert set(by) == {"plain20", "resnet20"}
    for m in by.values():
        assert len(m["std_by_layer"]) == 19 and all(s > 0 for s in m["std_by_layer"])
        assert m["images"] == 256 and m["seeds"] == 1
        # The pass that measures also scores: the same network as at the end of its training
        # (which evaluated in bf16, this in fp32: a few images may flip).
        assert abs(m["measured_error"] - m["test_error"]) <= 0.02
    assert len(result["conclusion"]) == 2 and "resnet20 mean response std" in result["conclusion"][0]
    with pytest.raises(UserError, match="--quick"):
        probes.responses(tmp_path / "none", depths=[56], source=source, quiet=True)


def test_cli_registers_the_probes_beside_the_experiments():
    parser = build_parser()
    args = parser.parse_args(["experiment", "gradients", "--out", "x", "--every", "5", "--quick"])
    assert args.every == 5 and "gradients" in args.more and args.depths is None
    args = parser.parse_args(["experiment", "degradation", "--out", "x"])
    assert args.name == "degradation"
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "nonsense", "--out", "x"])
