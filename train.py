"""Train (and compress) a network: python train.py --optform=SR|Deblur [--compress=schedules/<app>/agp_prune.yaml] ..."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from apps import get_app, optform
from apputils.execution_env import run_entry


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch on --optform, train, and print the app's headline and where everything went."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def work() -> None:
        app = get_app(optform(argv))
        opt = app.TrainOptions().parse(argv)
        trainer = app.Trainer(opt, *app.build_train_loaders(opt))
        result = trainer.run()
        print(f"\nrun {result['run']}: {result['headline']}")
        print(f"  best checkpoint    {result['best']}")
        print(f"  latest checkpoint  {result['latest']}  (continue with --resume {result['latest']})")
        print(f"  log                {result['log']}")
        print(f"  TensorBoard        tensorboard --logdir {result['tensorboard']}")
        print(f"  test it            python test.py --optform={opt.optform} --model={result['best']}")

    return run_entry(work)


if __name__ == "__main__":
    sys.exit(main())
