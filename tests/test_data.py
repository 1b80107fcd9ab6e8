"""Dataset readers on files in the real formats, and the on-device batch augmentation."""

import gzip
import logging
import pickle

import numpy as np
import pytest
import torch
from conftest import FASHION_MNIST
from fakedata import (
    idx_bytes,
    pattern_images,
    write_cifar_binary,
    write_cifar_python,
    write_image_folder,
    write_mnist,
)

from resnetkit import data
from resnetkit.errors import UserError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    folder = write_mnist(tmp_path, 64, 16, gz=gz)
    x, y = pattern_images(64, 28, seed=0)
    ds = data.load_arrays("mnist", folder, train=True)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (64, 1, 28, 28)
    assert ds.labels.dtype == torch.int64
    assert np.array_equal(ds.images[:, 0].numpy(), x) and np.array_equal(ds.labels.numpy(), y)


def test_idx_errors_name_the_file(tmp_path):
    x, y = pattern_images(10, 28)
    good = idx_bytes(x)
    (tmp_path / "short").write_bytes(good[:-5])
    with pytest.raises(UserError, match="truncated.*short"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x08\x03" + good[2:])
    with pytest.raises(UserError, match="bad magic.*magic"):
        data.read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(UserError, match="bad.gz"):
        data.read_idx(tmp_path / "bad.gz")
    # Label count differing from the image count.
    folder = write_mnist(tmp_path / "m", 20, 8)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y[:7])))
    with pytest.raises(UserError, match="label count 7 does not match image count 20.*train-labels"):
        data.load_arrays("mnist", folder, train=True)


def test_real_fashion_mnist():
    if not FASHION_MNIST.exists():
        pytest.skip("dataset-fashion-mnist not installed")
    train = data.load_arrays("fashion-mnist", None, train=True)
    test = data.load_arrays("fashion-mnist", None, train=False)
    assert train.images.shape == (60_000, 1, 28, 28) and len(test) == 10_000
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # balanced, as published
    assert train.classes[9] == "Ankle boot"
    mean, std = data.channel_stats(train.images)
    assert abs(mean[0] - 0.2860) < 1e-3 and abs(std[0] - 0.3530) < 1e-3  # well-known values


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        data.load_arrays("fashion-mnist", tmp_path / "nope", train=True)


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_python_version(tmp_path, as_tar):
    folder = write_cifar_python(tmp_path / "cifar-10-batches-py")
    src = folder
    if as_tar:
        import tarfile

        src = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(src, "w:gz") as t:
            t.add(folder, arcname="cifar-10-batches-py")
    train = data.load_arrays("cifar10", src, train=True)
    test = data.load_arrays("cifar10", src, train=False)
    assert train.images.shape == (100, 3, 32, 32) and len(test) == 20
    assert train.classes == [f"class{i}" for i in range(10)]
    first = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    assert np.array_equal(train.images[:20].reshape(20, -1).numpy(), first[b"data"])
    assert train.labels[:20].tolist() == first[b"labels"]


def test_cifar100_python_version(tmp_path):
    folder = write_cifar_python(tmp_path / "cifar-100-python", num_classes=100)
    train = data.load_arrays("cifar100", folder, train=True)
    assert len(train) == 100 and len(train.classes) == 100 and int(train.labels.max()) < 100


def test_cifar_binary_version(tmp_path):
    folder, x, y = write_cifar_binary(tmp_path / "cifar-10-batches-bin")
    train = data.load_arrays("cifar10", folder, train=True)
    assert np.array_equal(train.images.numpy(), x) and np.array_equal(train.labels.numpy(), y)
    (folder / "test_batch.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(UserError, match="not a multiple of 3073.*test_batch.bin"):
        data.load_arrays("cifar10", folder, train=False)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/resnetkit_pwned",))


def test_crafted_cifar_pickle_cannot_run_code(tmp_path):
    folder = write_cifar_python(tmp_path / "c")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_1.*posix.system is not allowed"):
        data.load_arrays("cifar10", folder, train=True)
    import os

    assert not os.path.exists("/tmp/resnetkit_pwned")


def test_tensor_loader_augments_whole_batches():
    images = torch.arange(4 * 1 * 6 * 6, dtype=torch.uint8).view(4, 1, 6, 6)
    ds = data.ArrayDataset(images, torch.arange(4), ["a", "b", "c", "d"])
    loader = data.TensorLoader(ds, 4, train=True, mean=[0.0], std=[1 / 255], pad=2, flip=True, seed=3)
    (x, y), = list(loader.epoch(0))
    x = x.round().to(torch.uint8)
    for img, label in zip(x, y):
        src = images[label, 0]
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        # Each output is some 6x6 window of the zero-padded source, possibly mirrored.
        windows = [padded[i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(img[0], w) or torch.equal(img[0], w.flip(1)) for w in windows)
    # Same seed and epoch: same batches; another epoch: another order.
    again = list(loader.epoch(0))[0]
    assert torch.equal(again[0].round().to(torch.uint8), x)
    orders = {tuple(b[1].tolist()) for e in range(6) for b in loader.epoch(e)}
    assert len(orders) > 1
    # Resuming mid-epoch yields exactly the remaining batches.
    loader2 = data.TensorLoader(ds, 1, train=True, mean=[0.0], std=[1.0], pad=2, flip=True, seed=3)
    full = [b for b in loader2.epoch(2)]
    tail = [b for b in loader2.epoch(2, start_batch=2)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], tail))


def test_alternating_flip_shows_each_image_mirrored_on_every_other_epoch():
    # Asymmetric images (a bright left column), so a mirror is visible; no crop.
    n = 64
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, :, 0] = 200
    ds = data.ArrayDataset(images, torch.arange(n), [str(i) for i in range(n)])

    def flipped(loader, epoch):  # image (its label) -> shown mirrored in this epoch
        return {int(label): bool(img[0, 0, 3].round() == 200) for x, y in loader.epoch(epoch)
                for img, label in zip(x, y)}

    loader = data.TensorLoader(ds, 16, train=True, mean=[0.0], std=[1 / 255], flip=True, alternate_flip=True, seed=5)
    e0, e1, e2, e3 = (flipped(loader, e) for e in range(4))
    assert len(e0) == n
    assert 0.25 < sum(e0.values()) / n < 0.75  # random in the first epoch
    assert all(e1[i] != e0[i] for i in range(n))  # then the other side...
    assert e2 == e0 and e3 == e1  # ...on every other epoch, whatever the order
    # Without it, consecutive epochs agree on about half the images (random flips).
    loader = data.TensorLoader(ds, 16, train=True, mean=[0.0], std=[1 / 255], flip=True, seed=5)
    r0, r1 = flipped(loader, 0), flipped(loader, 1)
    assert 0 < sum(r0[i] != r1[i] for i in range(n)) < n


def test_holdout_takes_the_last_training_images_and_never_the_test_split(tmp_path):
    from resnetkit.config import make_config

    folder = write_mnist(tmp_path / "m", n_train=50, n_test=20)
    train = data.load_arrays("mnist", folder, train=True)
    cfg = make_config({"data": "mnist", "data_dir": str(folder), "holdout": 10})
    loaders = data.build_loaders(cfg, torch.device("cpu"))
    assert torch.equal(loaders.test.images, train.images[40:])
    assert torch.equal(loaders.train.images, train.images[:40])
    assert loaders.mean == data.channel_stats(train.images[:40])[0]  # statistics without the held-out part
    with pytest.raises(UserError, match="--holdout 50 leaves no training images"):
        data.build_loaders(make_config({"data": "mnist", "data_dir": str(folder), "holdout": 50}),
                           torch.device("cpu"))


def test_random_erasing_boxes_follow_the_paper_ranges():
    g = torch.Generator().manual_seed(0)
    boxes = data.erase_boxes(20_000, 28, 28, 0.5, g)
    top, left, bh, bw = boxes.T
    on = bh > 0
    assert 0.48 < on.float().mean() < 0.52  # erased with probability p
    area = (bh * bw)[on].float() / (28 * 28)
    # Zhong et al.: 2-40% of the image (rounding to whole pixels moves the edges a little).
    assert area.min() >= 0.01 and area.max() <= 0.45 and 0.15 < area.mean() < 0.25
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= 28).all() and (left + bw <= 28).all()  # boxes lie inside the image
    assert not data.erase_boxes(100, 28, 28, 0.0, g)[:, 2].any()


def test_apply_erase_zeroes_exactly_the_box():
    x = torch.randn(3, 2, 8, 8) + 10  # nothing is 0 before erasing
    boxes = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 5], [5, 6, 3, 2]])  # the second: no box
    out = data.apply_erase(x, boxes)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = x[i].clone()
        expected[:, top:top + h, left:left + w] = 0
        assert torch.equal(out[i], expected)


def test_tensor_loader_erases_reproducibly():
    images = torch.full((64, 1, 10, 10), 200, dtype=torch.uint8)
    ds = data.ArrayDataset(images, torch.zeros(64, dtype=torch.long), ["a"])
    loader = data.TensorLoader(ds, 16, train=True, mean=[0.0], std=[1.0], erase=1.0, seed=5)
    full = list(loader.epoch(1))
    erased = torch.cat([x for x, _ in full]) == 0
    assert erased.flatten(1).any(1).all()  # p = 1: every image has a box
    assert not erased.flatten(1).all(1).any()  # and no box covers a whole image
    tail = list(loader.epoch(1, start_batch=2))  # a resumed epoch sees the same boxes
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))
    test = data.TensorLoader(ds, 16, train=False, mean=[0.0], std=[1.0], erase=1.0)
    assert all((x != 0).all() for x, _ in test.epoch(0))  # never at evaluation


def test_folder_loader_erases_training_batches_only(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n_per_class=2)
    common = {"mean": [0.5] * 3, "std": [0.25] * 3, "workers": 0, "erase": 1.0}
    train = data.FolderLoader(data.ImageFolder(root / "train", train=True, size=32), 6, train=True, **common)
    x = torch.cat([x for x, _ in train.epoch(0)])
    # Pixels here are never exactly 0.5 (0 once normalised): zeros are the erased boxes, in all channels.
    erased = (x == 0).all(1)
    assert erased.flatten(1).any(1).all() and not erased.flatten(1).all(1).any()
    val = data.FolderLoader(data.ImageFolder(root / "val", train=False, size=32), 6, train=False, **common)
    assert all((x != 0).all() for x, _ in val.epoch(0))


def test_first_images_are_the_same_normalised_images_on_every_call(tmp_path):
    # What the whitening stem is fitted on: in memory, the first n images as stored, normalised.
    images = torch.randint(0, 256, (20, 1, 6, 6), dtype=torch.uint8)
    ds = data.ArrayDataset(images, torch.arange(20), [str(i) for i in range(20)])
    loader = data.TensorLoader(ds, 8, train=True, mean=[0.3], std=[0.2], pad=2, flip=True, seed=1)
    assert torch.allclose(data.first_images(loader, 12), (images[:12].float() / 255 - 0.3) / 0.2)
    # Image folders: the first n of epoch 0's batches, across batch boundaries, reproducibly.
    root = write_image_folder(tmp_path / "imgs", n_per_class=4)
    folder = data.FolderLoader(data.ImageFolder(root / "train", train=True, size=32), 5, train=True,
                               mean=[0.5] * 3, std=[0.25] * 3, workers=0, seed=3)
    first = data.first_images(folder, 7)
    assert first.shape == (7, 3, 32, 32)
    assert torch.equal(first, torch.cat([x for x, _ in folder.epoch(0)])[:7])
    assert torch.equal(first, data.first_images(folder, 7))


def test_loader_shards_by_rank():
    ds = data.ArrayDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10), list("abcdefghij"))
    seen = []
    for rank in (0, 1):
        ld = data.TensorLoader(ds, 5, train=True, mean=[0.0], std=[1.0], seed=1, rank=rank, world_size=2)
        seen += [y for _, ys in ld.epoch(0) for y in ys.tolist()]
    assert sorted(seen) == list(range(10))  # disjoint shards that cover the set


def test_image_folder_streams_and_skips_unreadable(tmp_path, caplog):
    root = write_image_folder(tmp_path / "imgs", n_per_class=4)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    ds = data.ImageFolder(root / "train", train=True, size=32)
    assert ds.classes == ["cat", "dog", "fox"] and len(ds) == 14
    loader = data.FolderLoader(ds, 7, train=True, mean=[0.5] * 3, std=[0.25] * 3, workers=0, flip=True)
    with caplog.at_level(logging.WARNING, logger="resnetkit"):
        batches = list(loader.epoch(0))
        list(loader.epoch(1))
    assert loader.skipped == 4  # two per epoch
    # One warning per unreadable file, naming it, once for the whole run (not once per epoch).
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 2 and any("notes.txt" in m for m in warned) and any("broken.png" in m for m in warned)
    assert all(x.shape[1:] == (3, 32, 32) for x, _ in batches)
    assert sum(len(y) for _, y in batches) == 12  # two batches of 7 cover all 14; 2 skipped
    # Evaluation: resize + center crop, deterministic, every readable image once.
    val = data.ImageFolder(root / "val", train=False, size=32)
    ev = data.FolderLoader(val, 4, train=False, mean=[0.5] * 3, std=[0.25] * 3, workers=2)
    a = torch.cat([x for x, _ in ev.epoch(0)])
    b = torch.cat([x for x, _ in ev.epoch(0)])
    assert a.shape == (12, 3, 32, 32) and torch.equal(a, b)
    # The class tint survives the pipeline: the channel mean is highest for the true class.
    labels = torch.cat([y for _, y in ev.epoch(0)])
    assert (a.mean((2, 3)).argmax(1) == labels).all()


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="image folder not found"):
        data.ImageFolder(tmp_path / "missing", train=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        data.ImageFolder(tmp_path / "empty", train=True)


def test_normalisation_is_an_explicit_recorded_choice(tmp_path):
    from PIL import Image

    from resnetkit.config import make_config

    # 5,001 solid red images: more than the 5,000 past which RGB folders once switched silently
    # to ImageNet's statistics. "dataset" (the default) computes them from the images.
    red = Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8))
    for split, n in (("train", 5001), ("val", 2)):
        folder = tmp_path / split / "red"
        folder.mkdir(parents=True)
        for i in range(n):
            red.save(folder / f"{i}.png")
    base = {"data": "folder", "data_dir": str(tmp_path), "image_size": 8, "workers": 0}
    loaders = data.build_loaders(make_config(base), torch.device("cpu"))
    assert loaders.mean == pytest.approx([1.0, 0.0, 0.0]) and loaders.std == pytest.approx([1 / 255] * 3)
    named = data.build_loaders(make_config({**base, "normalize": "imagenet"}), torch.device("cpu"))
    assert (named.mean, named.std) == (data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert make_config({"recipe": "paper-imagenet"}).normalize == "imagenet"  # the recipe names it
    with pytest.raises(UserError, match="--normalize must be one of dataset, imagenet"):
        make_config({"normalize": "cifar"})


def test_folder_loader_resumes_mid_epoch_with_the_same_augmentation_and_shards(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n_per_class=6, size=12)
    ds = data.ImageFolder(root / "train", train=True, size=8, seed=3)
    kw = {"mean": [0.5] * 3, "std": [0.25] * 3, "workers": 0, "flip": True, "erase": 0.5, "seed": 3}
    loader = data.FolderLoader(ds, 4, train=True, **kw)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start_batch=2))  # a run resumed after two batches of epoch 2
    assert len(full) == len(loader) == 4 and len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # same images, crops, flips and erase boxes
    # Two ranks (DistributedSampler) take disjoint halves of the epoch's images, as many each.
    seen = []
    for rank in (0, 1):
        shard = data.FolderLoader(ds, 2, train=True, rank=rank, world_size=2, **kw)
        assert len(shard) == 18 // 2 // 2
        seen.append(shard._order(2))
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 9
