"""Super-resolution app (`--optform=SR`): options, data, models, Trainer and Tester."""
from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

from apputils import distributed

from .data import get_testing_set, get_training_set, get_validation_set
from .options import TestOptions, TrainOptions
from .solver import Trainer
from .tester import Tester


def build_train_loaders(opt: argparse.Namespace) -> tuple[DataLoader, DataLoader]:
    """Training loader (random crops, iters_per_epoch batches) and validation loader (whole images)."""
    train_set = get_training_set(opt.upscale_factor, opt.traindata, crop_size=opt.crop_size,
                                 length=opt.iters_per_epoch * opt.batchSize * distributed.world_size(), seed=opt.seed)
    val_set = (get_testing_set(opt.upscale_factor, opt.testdata) if opt.testdata  # a folder given: all of it
               else get_validation_set(opt.upscale_factor, opt.traindata))
    # workers are not persistent: each epoch's workers get a copy of the dataset with that epoch's seed;
    # under torchrun each rank takes its share of the epoch's crops (global batch = --batchSize x processes)
    train_loader = DataLoader(train_set, batch_size=opt.batchSize, shuffle=False, drop_last=True,
                              num_workers=opt.threads, sampler=distributed.sampler(train_set))
    val_loader = DataLoader(val_set, batch_size=opt.testBatchSize, shuffle=False, num_workers=0)
    return train_loader, val_loader


def build_test_loader(opt: argparse.Namespace) -> DataLoader:
    """Whole test images, one at a time."""
    return DataLoader(get_testing_set(opt.upscale_factor, opt.testdata), batch_size=1, shuffle=False,
                      num_workers=opt.threads)


__all__ = ["TestOptions", "Tester", "TrainOptions", "Trainer", "build_test_loader", "build_train_loaders",
           "get_testing_set", "get_training_set", "get_validation_set"]
