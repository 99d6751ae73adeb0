"""LightningDataModule over a manifest: split frames, decode cache, samplers, loaders."""

from __future__ import annotations

import lightning as L
import pandas as pd
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Sampler

from bonefrac.config import DataConfig
from bonefrac.data.dataset import PreparedImageCache, RadiographDataset, make_sampler
from bonefrac.data.schema import LABEL, SOURCE, SPLIT, SPLITS
from bonefrac.data.transforms import MIN_BOX_PX, train_augment
from bonefrac.errors import DataError


def split_frames(
    manifest: pd.DataFrame,
    source: str,
    limit_per_split: int | None = None,
    seed: int = 0,
    sources: list[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """``{train, val, test}`` frames; each must exist and train must hold both classes.

    ``sources`` keeps only those manifest sources in train and val (test keeps all).
    """
    if "split" not in manifest.columns:
        raise DataError(f"{source}: no 'split' column; build it with 'bonefrac data build'")
    if sources:
        if "source" not in manifest.columns:
            raise DataError(
                f"{source}: data.sources is set but the manifest has no 'source' column"
            )
        have = sorted(manifest[SOURCE].astype(str).unique())
        unknown = [s for s in sources if s not in have]
        if unknown:
            raise DataError(
                f"{source}: data.sources names {unknown}, but the manifest's sources are {have}"
            )
    frames: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        part = manifest[manifest[SPLIT] == split]
        if sources and split != "test":
            part = part[part[SOURCE].astype(str).isin(sources)]
        if part.empty:
            raise DataError(f"{source}: split {split!r} has no images; rebuild the manifest")
        if limit_per_split and len(part) > limit_per_split:
            frac = limit_per_split / len(part)
            part = part.groupby("label", group_keys=False).sample(frac=frac, random_state=seed)
        frames[split] = part.reset_index(drop=True)
    counts = frames["train"][LABEL].value_counts()
    for label, name in ((0, "not fractured"), (1, "fractured")):
        if counts.get(label, 0) == 0:
            raise DataError(f"{source}: the train split has no {name} (label {label}) images")
    return frames


class FractureDataModule(L.LightningDataModule):
    """Train/val/test loaders. Images are decoded once into memory when ``cfg.cache``.

    ``boxes`` (a localising model): training items carry their true boxes for the detector,
    none thinner than ``min_box`` pixels.
    """

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        cfg: DataConfig,
        seed: int,
        progress: bool = True,
        boxes: bool = False,
        min_box: float = MIN_BOX_PX,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.cfg = cfg
        self.seed = seed
        self.progress = progress
        train_size = round(cfg.image_size * cfg.cache_scale)
        self.train_cache = PreparedImageCache(train_size, clahe=cfg.clahe, keep=cfg.cache)
        self.eval_cache = PreparedImageCache(cfg.image_size, clahe=cfg.clahe, keep=cfg.cache)
        self.datasets = {
            "train": RadiographDataset(
                frames["train"],
                self.train_cache,
                train_augment(cfg.image_size, cfg.augment, cfg.randomise),
                boxes=boxes,
                min_box=min_box,
            ),
            "val": RadiographDataset(frames["val"], self.eval_cache),
            "test": RadiographDataset(frames["test"], self.eval_cache),
        }

    def prepare_data(self) -> None:
        """Fill the decode caches up front (one pass, with a progress bar)."""
        self.train_cache.fill(self.datasets["train"].paths, "decoding train images", self.progress)
        eval_paths = self.datasets["val"].paths + self.datasets["test"].paths
        self.eval_cache.fill(eval_paths, "decoding val/test images", self.progress)

    def _replicas(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached Trainer; ``(1, 0)`` before one is."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, split: str, batch_size: int, train: bool = False) -> DataLoader:
        ds = self.datasets[split]
        workers = self.cfg.num_workers
        world, rank = self._replicas()
        sampler: Sampler[int] | None = None
        if train:
            sources = ds.frame[SOURCE].to_numpy() if SOURCE in ds.frame.columns else None
            sampler = make_sampler(self.cfg.sampler, ds.labels, self.seed, world, rank, sources)
        elif world > 1:
            # each image on exactly one rank, none repeated to even out the ranks
            sampler = UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=train and len(sampler or ds) > batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.cfg.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.cfg.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.cfg.eval_batch_size)

    def steps_per_epoch(self) -> int:
        n = len(self.train_dataloader())
        return n
