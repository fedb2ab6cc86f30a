"""Train (and compress) a network: python train.py --optform=SR|Deblur [--compress=schedules/<app>/agp_prune.yaml] ..."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from apps import get_app, optform
from apps.common.solver import resolve_device
from apputils import distributed
from apputils.execution_env import run_entry


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch on --optform, train, and print the app's headline and where everything went.

    Under torchrun every process trains its share of each batch (DDP); rank 0 names the run and prints."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def work() -> None:
        app = get_app(optform(argv))
        opt = app.TrainOptions().parse(argv)
        with distributed.process_group(resolve_device(opt.device)):
            opt.save = distributed.broadcast_object(opt.save)  # a timestamped default name is rank 0's
            trainer = app.Trainer(opt, *app.build_train_loaders(opt))
            result = trainer.run()
            main = distributed.is_main()
        if not main:
            return
        print(f"\nrun {result['run']}: {result['headline']}")
        print(f"  best checkpoint    {result['best']}")
        print(f"  latest checkpoint  {result['latest']}  (continue with --resume {result['latest']})")
        print(f"  log                {result['log']}")
        print(f"  TensorBoard        tensorboard --logdir {result['tensorboard']}")
        print(f"  test it            python test.py --optform={opt.optform} --model={result['best']}")

    return run_entry(work)


if __name__ == "__main__":
    sys.exit(main())
