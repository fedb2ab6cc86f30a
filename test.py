"""Test a trained checkpoint: python test.py --optform=SR --model=checkpoints/<run>/best.pth [--reports]"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from apputils.huge_pages import prefer_huge_pages

prefer_huge_pages()  # before torch is imported: faster whole-image CPU evaluation (apputils/huge_pages.py)

from apps import get_app, optform  # noqa: E402
from apps.common.solver import resolve_device  # noqa: E402
from apputils import distributed  # noqa: E402
from apputils.execution_env import run_entry  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch on --optform, test, and print the table and where the outputs went."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def work() -> None:
        app = get_app(optform(argv))
        opt = app.TestOptions().parse(argv)
        with distributed.process_group(resolve_device(opt.device)):  # torchrun: ranks share the sensitivity analysis
            tester = app.Tester(opt, app.build_test_loader(opt))
            result = tester.run(opt)
            main = distributed.is_main()
        if not main:
            return
        print("\n" + result["table"])
        print(f"\n  images and metrics.csv  {result['images']}")
        print(f"  log                     {result['log']}")
        if "reports" in result:
            reports = result["reports"]
            summary = reports.get("summary") if isinstance(reports, dict) else None
            print("\n" + (summary if isinstance(summary, str) else f"  reports  {reports}"))

    return run_entry(work)


if __name__ == "__main__":
    sys.exit(main())
