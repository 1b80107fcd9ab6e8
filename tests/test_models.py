"""The model family against independent facts: torchvision's keys, shapes and counts,
the paper's and the CIFAR reference counts, and a functional re-implementation of
torchvision's forward pass."""

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REFERENCE, SHARED_REFERENCE

import resnetkit
from resnetkit.architecture import trace
from resnetkit.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ZeroPadShortcut

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
            "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
PLAIN = ["plain18", "plain34", "plain20", "plain32", "plain44", "plain56", "plain110"]
FASHION = ["fashion_resnet8", "fashion_resnet14", "fashion_resnet8_pool", "fashion_resnet8_pool16",
           "fashion_resnet8_pool16_proj"]
# Checked by counts only: too large for a fast forward/backward on 2 cores.
HUGE = {"resnet1202", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"}


def meta_model(name, **kw):
    """Build on the meta device: shapes and counts without allocating or computing."""
    with torch.device("meta"):
        return resnetkit.create_model(name, **kw)


def test_registry_lists_every_required_name():
    assert resnetkit.list_models() == sorted(IMAGENET + CIFAR + PLAIN + FASHION)
    assert resnetkit.list_models("plain*") == sorted(PLAIN)
    with pytest.raises(KeyError, match="resnet50"):
        resnetkit.create_model("resnet5O")  # letter O: suggests the real name
    with pytest.raises(ValueError, match="already registered"):
        resnetkit.register_model(resnetkit.resnet.resnet18)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_state_dict_params_and_macs_match_torchvision(name, torchvision_ref):
    ref = torchvision_ref[name]
    model = meta_model(name)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["state_dict"]
    assert list(model.state_dict()) == list(ref["state_dict"])  # same order too
    s = resnetkit.summary(model, (1, 3, 224, 224))
    assert s.params == ref["params"]
    assert s.macs == ref["macs_224"]


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_params_and_macs_match_reference(name, anchors):
    ref = anchors["cifar_resnets_option_A"]
    s = resnetkit.summary(meta_model(name), (1, 3, 32, 32))
    assert s.params == ref["params"][name]
    assert s.macs == ref["macs_32"][name]
    assert s.weighted_layers == int(name[len("resnet"):])  # 6n+2


def test_paper_v1_bottleneck_gmacs(anchors):
    # Paper Table 1 puts the stride on the first 1x1: 3.86 / 7.57 / 11.28 GMACs (anchors note).
    for name, gmacs in [("resnet50", 3.86), ("resnet101", 7.57), ("resnet152", 11.28)]:
        s = resnetkit.summary(meta_model(name, version="1"), (1, 3, 224, 224))
        assert round(s.macs / 1e9, 2) == gmacs
        table1 = anchors["paper_he_2016"]["table1_imagenet_macs"][name]
        assert abs(s.macs - table1) / table1 < 0.02


@pytest.mark.parametrize("plain,twin,size", [
    ("plain18", "resnet18", 224), ("plain34", "resnet34", 224), ("plain20", "resnet20", 32),
    ("plain32", "resnet32", 32), ("plain44", "resnet44", 32), ("plain56", "resnet56", 32),
    ("plain110", "resnet110", 32),
])
def test_plain_nets_count_like_their_option_a_twins(plain, twin, size):
    p = resnetkit.summary(meta_model(plain), (1, 3, size, size))
    r = resnetkit.summary(meta_model(twin, shortcut="A"), (1, 3, size, size))
    assert (p.params, p.macs, p.weighted_layers) == (r.params, r.macs, r.weighted_layers)


def test_resnet50_is_49_convs_plus_one_fc():
    s = resnetkit.summary(meta_model("resnet50"), (1, 3, 224, 224))
    convs = [r for r in s.rows if r.type == "Conv2d"]
    assert sum(r.main_path for r in convs) == 49
    assert sum(not r.main_path for r in convs) == 4  # one projection per stage
    assert [r.type for r in s.rows if r.type == "Linear"] == ["Linear"]
    assert s.weighted_layers == 50
    assert s.params == 25_557_032
    text = str(s)
    assert "25,557,032" in text and "Weighted layers:  50" in text


def test_shortcut_options_parameter_order():
    a, b, c, none = (resnetkit.summary(meta_model("resnet34", shortcut=o)).params
                     for o in ("A", "B", "C", "none"))
    assert a == none < b < c  # paper Sec. 3.3: A is parameter-free, C projects everywhere
    # B's extra parameters are exactly the three 1x1 projections (+BN) of torchvision's resnet34.
    assert b - a == sum(ci * co + 2 * co for ci, co in [(64, 128), (128, 256), (256, 512)])


# --- a functional torchvision ResNet, written from its definition, to check outputs -----------

def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                        sd[p + ".bias"], training=False, eps=1e-5)


def torchvision_forward(sd, x, layers, bottleneck, groups=1):
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for s, n in enumerate(layers):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if (s > 0 and b == 0) else 1
            idt = x
            if p + ".downsample.0.weight" in sd:
                idt = _bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), sd,
                          p + ".downsample.1")
            if bottleneck:  # v1.5: stride on the 3x3
                o = F.relu(_bn(F.conv2d(x, sd[p + ".conv1.weight"]), sd, p + ".bn1"))
                o = F.relu(_bn(F.conv2d(o, sd[p + ".conv2.weight"], stride=stride, padding=1,
                                        groups=groups), sd, p + ".bn2"))
                o = _bn(F.conv2d(o, sd[p + ".conv3.weight"]), sd, p + ".bn3")
            else:
                o = F.relu(_bn(F.conv2d(x, sd[p + ".conv1.weight"], stride=stride, padding=1), sd,
                               p + ".bn1"))
                o = _bn(F.conv2d(o, sd[p + ".conv2.weight"], padding=1), sd, p + ".bn2")
            x = F.relu(o + idt)
    x = x.mean((2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("name,layers,bottleneck,groups", [
    ("resnet18", (2, 2, 2, 2), False, 1),
    ("resnet50", (3, 4, 6, 3), True, 1),
    ("resnext50_32x4d", (3, 4, 6, 3), True, 32),
])
def test_torchvision_checkpoint_loads_strict_and_gives_same_outputs(
        name, layers, bottleneck, groups, torchvision_ref):
    # A "torchvision checkpoint": the reference keys and shapes, filled with random values.
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in torchvision_ref[name]["state_dict"].items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    model = resnetkit.create_model(name).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torchvision_forward(sd, x, layers, bottleneck, groups),
                                   rtol=1e-4, atol=1e-4)


# --- every model runs: forward, backward, export -----------------------------------------------

RUNNABLE = [n for n in resnetkit.list_models() if n not in HUGE]


@pytest.mark.parametrize("name", RUNNABLE)
def test_forward_backward_and_export(name):
    torch.manual_seed(0)
    model = resnetkit.create_model(name, num_classes=7)
    size = 32 if model.default_input_size[1] == 32 else 64
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reached {missing[:5]}"

    model.eval()
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", ["1", "1.5", "2"])
@pytest.mark.parametrize("shortcut", ["A", "B", "C", "none"])
def test_every_option_combination_runs(version, shortcut):
    for name in ("resnet20", "resnet50"):
        model = resnetkit.create_model(name, shortcut=shortcut, version=version, in_chans=1,
                                       num_classes=3)
        out = model(torch.randn(2, 1, 32, 32))
        assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_stride_placement_of_versions():
    v1 = resnetkit.create_model("resnet50", version="1").layer2[0]
    v15 = resnetkit.create_model("resnet50").layer2[0]
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))


def test_zero_init_residual_makes_blocks_identities():
    """With the last BN (or conv) of each branch at zero, F(x) = 0 and a block outputs
    relu(x + 0) = x for x >= 0 (post-activation) or exactly x (pre-activation)."""
    x = torch.rand(2, 16, 8, 8)
    post = resnetkit.create_model("resnet20", zero_init_residual=True).eval().layer1[0]
    pre = resnetkit.create_model("resnet20", zero_init_residual=True, version="2").eval().layer1[0]
    with torch.no_grad():
        torch.testing.assert_close(post(x), x)
        xs = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(pre(xs), xs)  # no ReLU after the add
        # A downsampling option-A block passes x subsampled and zero-padded.
        down = resnetkit.create_model("resnet20", zero_init_residual=True).eval().layer2[0]
        assert isinstance(down.downsample, ZeroPadShortcut)
        out = down(x)
        torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
        assert out[:, 16:].abs().max() == 0
    # Plain nets have no identity to fall back on: their zero-init block outputs zeros.
    plain = resnetkit.create_model("plain20", zero_init_residual=True).eval().layer1[0]
    with torch.no_grad():
        assert plain(x).abs().max() == 0


def test_init_follows_the_paper():
    m = resnetkit.create_model("resnet56")
    w = m.layer3[0].conv1.weight  # fan_out = 64 * 3 * 3, kaiming: std = sqrt(2 / fan_out)
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01
    assert (m.layer3[0].bn1.weight == 1).all() and (m.layer3[0].bn1.bias == 0).all()


def test_drop_path_is_stochastic_in_training_only():
    m = resnetkit.create_model("resnet20", drop_path_rate=0.5)
    rates = [b.drop_path.p for s in m.stages() for b in s if hasattr(b.drop_path, "p")]
    assert rates[-1] == 0.5 and rates == sorted(rates)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
        m.train()
        torch.manual_seed(0)
        a = m(x)
        torch.manual_seed(1)
        assert not torch.allclose(a, m(x))


def test_features_head_and_classifier_reset():
    m = resnetkit.create_model("resnet18", in_chans=1, num_classes=5).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 512, 2, 2)
        assert m.forward_head(f, pre_logits=True).shape == (2, 512)
        torch.testing.assert_close(m.forward_head(f), m(x))
    m.reset_classifier(11)
    assert m(x).shape == (2, 11) and m.model_args["num_classes"] == 11
    m.reset_classifier(0)
    assert m(x).shape == (2, 512)


def test_channels_last_matches_contiguous():
    m = resnetkit.create_model("resnet50", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), ref,
                                   rtol=1e-4, atol=1e-4)


def test_option_a_shortcut_keeps_channels_last_in_both_passes():
    """The shortcut subsamples like x[:, :, ::2, ::2] (odd sizes too) and zero-pads, and its
    output and its input's gradient stay channels_last: a slice's backward would hand the
    block an NCHW gradient, and every ReLU backward and residual sum after it mixes layouts."""
    sc = ZeroPadShortcut(16, 32, 2)
    for size in (7, 14):
        x = torch.randn(4, 16, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        out = sc(x)
        half = (size + 1) // 2
        assert out.shape == (4, 32, half, half)
        assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()
        grad = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
        (gx,) = torch.autograd.grad(out, x, grad)
        expected = torch.zeros(x.shape)
        expected[:, :, ::2, ::2] = grad[:, :16]
        assert torch.equal(gx, expected)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last) and not gx.is_contiguous()


def test_torch_compile_matches_eager():
    m = resnetkit.create_model("resnet20", version="2").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x), m(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = resnetkit.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "resnet20.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), m(x), rtol=1e-4, atol=1e-4)


def test_cli_summary_prints_table_and_totals():
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "summary", "resnet50"],
                         capture_output=True, text=True, check=True)
    assert "layer4.2.conv3" in run.stdout and "25,557,032" in run.stdout
    assert "4,089,184,256" in run.stdout
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "summary", "resnet20",
                          "--in-chans", "1", "--input-size", "1", "28", "28", "--num-classes", "10"],
                         capture_output=True, text=True, check=True)
    # One input channel instead of three: the 3x3 stem conv loses 2 x 16 x 9 weights.
    assert f"{269_722 - 2 * 16 * 9:,} trainable" in run.stdout


def test_cli_unknown_model_is_one_line_exit_2():
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "summary", "resnet51"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "unknown model 'resnet51'" in run.stderr
    assert "Traceback" not in run.stderr


def test_norm_layer_is_injectable():
    m = resnetkit.create_model("resnet20", norm_layer=lambda c: torch.nn.GroupNorm(8, c))
    norms = [x for x in m.modules() if isinstance(x, torch.nn.GroupNorm)]
    assert len(norms) == 19 and not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert torch.isfinite(m(torch.randn(2, 3, 32, 32))).all()
    assert all(float(n.weight.mean()) == 1.0 for n in norms)  # initialised like BN


def test_cli_list_filters():
    run = subprocess.run([sys.executable, "-m", "resnetkit.cli", "list", "plain*"],
                         capture_output=True, text=True, check=True)
    assert run.stdout.split() == sorted(PLAIN)


def test_reference_copy_matches_the_shared_originals():
    shared = SHARED_REFERENCE
    if not shared.is_dir():
        pytest.skip("no ../shared/reference beside this clone: the copy in tests/reference is used alone")
    for name in ("torchvision_resnets.json", "anchors.json"):
        assert (REFERENCE / name).read_bytes() == (shared / name).read_bytes(), name


@pytest.mark.parametrize("name", IMAGENET + CIFAR + PLAIN)
def test_depth_is_the_paper_count_of_weighted_layers(name):
    # The number in the name is the paper's count (stem conv + main-path convs + fc).
    assert meta_model(name).depth == int(re.search(r"\d+", name).group())


def test_custom_widths_and_blocks_per_stage():
    m = resnetkit.create_model("resnet20", widths=[32, 64, 128], blocks=[1, 1, 1], in_chans=1)
    s = resnetkit.summary(m, (1, 1, 28, 28))
    assert m.depth == s.weighted_layers == 8  # stem + 3 blocks x 2 convs + fc
    assert [len(st) for st in m.stages()] == [1, 1, 1]
    assert m.layer3[0].conv2.weight.shape == (128, 128, 3, 3) and m.fc.in_features == 128
    # Option A (the CIFAR default) keeps the parameter count of the plain twin.
    plain = resnetkit.create_model("plain20", widths=[32, 64, 128], blocks=[1, 1, 1], in_chans=1)
    assert s.params == sum(p.numel() for p in plain.parameters())
    assert meta_model("resnet18", blocks=[1, 1, 1, 1]).depth == 10
    with pytest.raises(ValueError, match="one width per stage"):
        resnetkit.create_model("resnet20", widths=[16, 32])


def test_blocks_take_only_the_arguments_they_use():
    with pytest.raises(ValueError, match="PreActBasicBlock only supports groups=1"):
        PreActBasicBlock(64, 64, groups=2)
    with pytest.raises(ValueError, match="^BasicBlock only supports groups=1"):
        BasicBlock(64, 64, base_width=128)
    for cls in (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck):
        with pytest.raises(TypeError, match="version"):
            cls(64, 16, version="1")
    # Where to stride is a bottleneck's choice only: v1 strides the first 1x1, v1.5 the 3x3.
    v1, v15 = Bottleneck(64, 16, 2, stride_in_1x1=True), Bottleneck(64, 16, 2)
    assert (v1.conv1.stride, v1.conv2.stride, v15.conv1.stride, v15.conv2.stride) == ((2, 2), (1, 1), (1, 1), (2, 2))


def test_whitening_stem_decorrelates_the_patches_it_was_fitted_on():
    # Images whose neighbouring pixels are strongly correlated (random walks along rows).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, 20, 20, generator=g).cumsum(3) / 4
    m = resnetkit.create_model("resnet20", num_classes=10, in_chans=1, stem="whiten", widths=(32, 32, 64))
    m.fit_whitening(x)
    w = m.conv1.weight
    assert w.shape == (18, 1, 3, 3) and not w.requires_grad
    assert torch.equal(w[9:], -w[:9])  # each filter and its negative, for the ReLU
    # Over the 3x3 patches (valid positions), the first 9 outputs have the identity as their
    # second-moment matrix, up to the eps that keeps the smallest directions bounded.
    y = F.conv2d(x.double(), w[:9].double()).permute(0, 2, 3, 1).reshape(-1, 9)
    second_moment = y.T @ y / len(y)
    patches = F.unfold(x.double(), 3).transpose(1, 2).reshape(-1, 9)
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)
    assert torch.allclose(second_moment, torch.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-6)
    assert eigenvalues[0] / eigenvalues[-1] > 50  # the input was far from white
    with pytest.raises(ValueError, match="needs a whitening stem"):
        resnetkit.create_model("resnet20").fit_whitening(x)
    # A first stage too narrow for all 18 keeps the 8 strongest directions and their negatives.
    narrow = resnetkit.create_model("resnet20", num_classes=10, in_chans=1, stem="whiten")  # widths 16/32/64
    narrow.fit_whitening(x)
    assert torch.equal(narrow.conv1.weight, w[[*range(8), *range(9, 17)]])
    assert resnetkit.create_model("resnet20", stem="whiten").conv1.weight.shape == (16, 3, 3, 3)


def test_whiten_pool_stem_runs_the_stages_at_half_the_resolution():
    x = torch.randn(64, 1, 28, 28)
    pooled = resnetkit.create_model("resnet20", num_classes=10, in_chans=1, stem="whiten-pool", widths=(32, 32, 64))
    full = resnetkit.create_model("resnet20", num_classes=10, in_chans=1, stem="whiten", widths=(32, 32, 64))
    pooled.fit_whitening(x)
    full.fit_whitening(x)
    assert torch.equal(pooled.conv1.weight, full.conv1.weight) and not pooled.conv1.weight.requires_grad
    # Stage outputs 14, 7, 4 (the 28x28 net: 28, 14, 7), and about a quarter of the multiply-adds.
    sizes = [pooled.layer1(pooled.maxpool(pooled.relu(pooled.bn1(pooled.conv1(x))))).shape[-1]]
    assert sizes == [14] and pooled.forward_features(x).shape[-1] == 4 and full.forward_features(x).shape[-1] == 7
    macs = [resnetkit.summary(m, (1, 1, 28, 28)).macs for m in (pooled, full)]
    assert 0.24 < macs[0] / macs[1] < 0.3
    assert pooled(x).shape == (64, 10)


def test_whiten16_pool_stem_keeps_16_filters_and_pools_before_its_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    kw = {"num_classes": 10, "in_chans": 1}
    old = resnetkit.create_model("fashion_resnet8_pool", **kw)
    new = resnetkit.create_model("fashion_resnet8_pool16", **kw)
    assert repr(new) == repr(resnetkit.create_model("fashion_resnet8_pool", stem="whiten16-pool", **kw))
    old.fit_whitening(x)
    new.fit_whitening(x)
    # The 8 strongest of the 9 directions and their negatives; the first block reads 16 channels.
    assert torch.equal(new.conv1.weight, old.conv1.weight[[*range(8), *range(9, 17)]])
    assert new.layer1[0].conv1.in_channels == 16 and not new.conv1.weight.requires_grad
    # Counted by hand from the 18-filter net (1,157,712 parameters, 34,380,832 multiply-adds):
    # 2 fewer 3x3 stem filters (18 weights), BN channels (4) and 2 x 64 x 9 in the first conv
    # (1,152); 2 x 9 multiply-adds at 28x28 (14,112) and 2 x 64 x 9 at 14x14 (225,792).
    s = resnetkit.summary(new, (1, 1, 28, 28))
    assert (s.total_params, s.macs) == (1_157_712 - 1_174, 34_380_832 - 239_904)
    # BN after the pool: its statistics are those of the pooled whitened maps (momentum 0.1).
    new.train()(x)
    pooled = F.max_pool2d(F.conv2d(x, new.conv1.weight, padding=1), 2)
    assert torch.allclose(new.bn1.running_mean, 0.1 * pooled.mean((0, 2, 3)), atol=1e-6)
    assert [layer.kind for layer in trace(new, (1, 28, 28)).stem] == ["conv", "maxpool", "bn", "relu"]


def test_global_max_pool_hands_the_classifier_each_channels_strongest_response():
    torch.manual_seed(0)
    kw = {"num_classes": 10, "in_chans": 1}
    avg = resnetkit.create_model("fashion_resnet8_pool16", **kw).eval()
    mx = resnetkit.create_model("fashion_resnet8_pool16", global_pool="max", **kw).eval()
    mx.load_state_dict(avg.state_dict())  # pooling holds no weights: the same keys and shapes
    x = torch.randn(4, 1, 28, 28)
    feats = mx.forward_features(x)
    assert torch.equal(mx.forward_head(feats, pre_logits=True), feats.amax((2, 3)))
    assert torch.allclose(avg.forward_head(feats, pre_logits=True), feats.mean((2, 3)))
    assert torch.allclose(mx(x), F.linear(feats.amax((2, 3)), avg.fc.weight, avg.fc.bias), atol=1e-5)
    assert [(layer.kind, layer.label) for layer in trace(mx, (1, 28, 28)).head][0] == ("maxpool", "global max pool")
    with pytest.raises(ValueError, match="global_pool must be one of avg, max"):
        resnetkit.create_model("resnet20", global_pool="min")


def test_the_projection_net_is_the_pool16_net_with_option_b_shortcuts_and_a_max_head():
    kw = {"num_classes": 10, "in_chans": 1}
    proj = resnetkit.create_model("fashion_resnet8_pool16_proj", **kw)
    spelled = resnetkit.create_model("fashion_resnet8_pool16", shortcut="B", global_pool="max", **kw)
    assert repr(proj) == repr(spelled)
    # Counted by hand from fashion_resnet8_pool16 (1,156,538 parameters, 34,140,928 multiply-adds):
    # a 1x1 conv and BN on each shortcut, 16->64 at 14x14, 64->128 at 7x7, 128->256 at 4x4.
    convs = [(16, 64, 14 * 14), (64, 128, 7 * 7), (128, 256, 4 * 4)]
    s = resnetkit.summary(proj, (1, 1, 28, 28))
    assert s.total_params == 1_156_538 + sum(i * o + 2 * o for i, o, _ in convs) == 1_199_418
    assert s.macs == 34_140_928 + sum(i * o * n for i, o, n in convs)
    blocks = trace(proj, (1, 28, 28)).stages
    assert [b.shortcut for stage in blocks for b in stage.blocks] == ["projection"] * 3
