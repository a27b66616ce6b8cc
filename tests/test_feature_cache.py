"""The feature store: each set of features is extracted once, saved in the run folder, reused only when valid."""

import torch

from selfsup.data import sources
from selfsup.evaluate.cache import CACHE_FILE, FeatureStore, fingerprint
from selfsup.nets.backbones import build_backbone


class CountingNet(torch.nn.Module):
    """A tiny backbone that counts the images it has embedded."""

    def __init__(self):
        super().__init__()
        self.net = build_backbone("small-cnn", 1, width=4)
        self.dim = self.net.dim
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


def make_store(tmp_path, encoder_bytes=b"weights", seed=0, train=None, test=None, log=None):
    train = train or sources.load("synthetic", "train", n=60, seed=0)
    test = test or sources.load("synthetic", "test", n=40, seed=0)
    encoder = tmp_path / "encoder.safetensors"
    encoder.write_bytes(encoder_bytes)
    torch.manual_seed(5)
    backbone = CountingNet()
    fresh_made = []

    def fresh():
        net = CountingNet()
        fresh_made.append(net)
        return net

    store = FeatureStore(backbone, fresh, train.images, train.labels, test.images, test.labels, seed, 16,
                         torch.device("cpu"), tmp_path, encoder, log=(log or (lambda s: None)))
    return store, backbone, fresh_made


def test_each_set_is_extracted_once_and_saved(tmp_path):
    store, backbone, fresh_made = make_store(tmp_path)
    a = store.ssl("train")
    b = store.ssl("train")
    assert a is b and backbone.seen == 60
    store.ssl("test")
    store.random("test")
    assert backbone.seen == 100 and len(fresh_made) == 1 and fresh_made[0].seen == 40
    assert store.extracted == ["ssl_train", "ssl_test", "random_test"]
    assert not (tmp_path / CACHE_FILE).exists()  # written once, when asked, not after every set
    store.save()
    assert (tmp_path / CACHE_FILE).is_file()
    written = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    store.save()  # nothing new: not rewritten
    assert (tmp_path / CACHE_FILE).stat().st_mtime_ns == written


def test_a_second_store_reuses_the_file_and_extracts_nothing(tmp_path):
    first, _, _ = make_store(tmp_path)
    ssl_train, random_test = first.ssl("train"), first.random("test")
    first.save()
    second, backbone, fresh_made = make_store(tmp_path)
    assert sorted(second.loaded) == ["random_test", "ssl_train"]
    assert torch.equal(second.ssl("train"), ssl_train) and torch.equal(second.random("test"), random_test)
    assert backbone.seen == 0 and fresh_made == []  # neither network ran


def saved(store):
    store.ssl("train")
    store.save()
    return store


def test_the_file_is_ignored_when_the_encoder_data_or_seed_changes(tmp_path):
    saved(make_store(tmp_path)[0])
    said = []
    other_encoder, backbone, _ = make_store(tmp_path, encoder_bytes=b"other weights", log=said.append)
    assert other_encoder.loaded == [] and "another encoder" in said[0]
    saved(other_encoder)
    assert backbone.seen == 60
    saved(make_store(tmp_path)[0])  # the file is now the default encoder's again
    assert make_store(tmp_path, seed=1)[0].loaded == []
    other_data = sources.load("synthetic", "train", n=60, seed=1)
    assert make_store(tmp_path, train=other_data)[0].loaded == []


def test_a_damaged_file_is_replaced_not_trusted(tmp_path):
    (tmp_path / CACHE_FILE).write_bytes(b"not a safetensors file")
    said = []
    store, backbone, _ = make_store(tmp_path, log=said.append)
    assert store.loaded == [] and "unreadable" in said[0]
    store.ssl("test")
    store.save()
    assert backbone.seen == 40 and make_store(tmp_path)[0].loaded == ["ssl_test"]


def test_random_rows_match_the_full_set_and_use_one_random_network(tmp_path):
    store, _, fresh_made = make_store(tmp_path)
    rows = torch.tensor([3, 7, 11])
    few = store.random_rows(rows)
    full = store.random("train")
    assert torch.allclose(few, full[rows], atol=1e-5) and len(fresh_made) == 1
    assert torch.equal(store.random_rows(rows), full[rows])  # from the full set once it exists


def test_no_run_folder_means_no_file(tmp_path):
    train = sources.load("synthetic", "train", n=60, seed=0)
    store = FeatureStore(CountingNet(), CountingNet, train.images, train.labels, train.images, train.labels, 0, 16,
                         torch.device("cpu"))
    store.ssl("test")
    assert store.path is None and not (tmp_path / CACHE_FILE).exists()


def test_the_fingerprint_sees_labels_and_pixels():
    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(10)
    base = fingerprint(images, labels)
    changed = images.clone()
    changed[0, 0, 0, 0] = 1  # the first pixel is always in the strided sample
    assert fingerprint(changed, labels) != base
    assert fingerprint(images, labels.flip(0)) != base
    assert fingerprint(images, labels) == base
