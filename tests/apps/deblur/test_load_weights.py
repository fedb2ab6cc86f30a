"""`train.py --optform=Deblur --load_weights CKPT`: a filter-pruning run starts from a trained dense generator and
its critic, in its own folder, and resumes; every misuse is one `error:` line."""
import pytest
import torch

from apps.deblur import Trainer, build_train_loaders
from apps.deblur.options import TrainOptions
from tests.app_runs import ROOT, entry_main, load
from tests.apps.deblur.test_runs import small_validation_pairs
from tests.test_entrypoints import in_process  # noqa: F401  (runs main() here, drops its log handlers)

SCHEDULES = ROOT / "schedules" / "deblur"
LOOP = ["--optform=Deblur", "--testdata", "val", "--crop_size", "16", "--batchSize", "2", "--blur_size", "5",
        "--critic_iters", "2", "--iters_per_epoch", "1", "--nEpochs", "1", "--print_freq", "1"]
DENSE = [*LOOP, "--ngf", "4", "--ndf", "4", "--save", "dense"]  # 9 blocks: the shipped schedules' names
PRUNE = [*LOOP, "--load_weights", "checkpoints/dense/best.pth", "--compress", str(SCHEDULES / "filter_prune.yaml")]


def test_filter_pruning_starts_from_the_dense_generator_and_critic_then_resumes(in_process, capsys):  # noqa: F811
    small_validation_pairs(in_process)
    train = entry_main("train")
    assert train(DENSE) == 0
    dense = load(in_process / "checkpoints/dense/best.pth")

    opt = TrainOptions().parse([*PRUNE, "--save", "probe"])
    assert (opt.ngf, opt.n_blocks, opt.ndf) == (4, 9, 4)  # from the checkpoint, not DeblurGAN-CPU's 16 / 16
    trainer = Trainer(opt, *build_train_loaders(opt))
    trainer.build_model()
    for name, value in dense["model"].items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    for name, value in dense["networks"]["critic"]["model"].items():  # the critic comes along
        assert torch.equal(trainer.adversary.critic.state_dict()[name], value), name
    assert trainer.validate()["psnr"] == pytest.approx(dense["history"][-1]["psnr"], abs=1e-9)

    assert train([*PRUNE, "--save", "pruned"]) == 0
    new = load(in_process / "checkpoints/pruned/latest.pth")
    assert new["options"]["load_weights"] == "checkpoints/dense/best.pth" and new["epoch"] == 0
    assert "pruner:inner_filters" in new["scheduler"]["policies"]
    assert train(["--optform=Deblur", "--resume", "checkpoints/pruned/latest.pth", "--nEpochs", "2"]) == 0
    assert load(in_process / "checkpoints/pruned/latest.pth")["epoch"] == 1
    log = (in_process / "logs/pruned/pruned.log").read_text()
    assert log.count("--load_weights: the model of checkpoints/dense/best.pth") == 1
    assert log.count("--load_weights: the critic comes from the checkpoint too") == 1
    assert capsys.readouterr().err.count("error:") == 0


def test_without_a_critic_in_the_checkpoint_the_critic_starts_fresh(in_process, caplog):  # noqa: F811
    small_validation_pairs(in_process)
    assert entry_main("train")([*DENSE, "--gan", "off"]) == 0
    opt = TrainOptions().parse([*PRUNE, "--save", "probe"])
    assert opt.ndf == 16  # the --model preset's: the checkpoint has no critic
    Trainer(opt, *build_train_loaders(opt)).build_model()
    assert "the checkpoint has no critic (trained with --gan off): the critic starts fresh" in caplog.text


@pytest.mark.parametrize(("argv", "expect"), [
    (["--load_weights", "checkpoints/dense/best.pth", "--n_blocks", "2"],
     "error: --n_blocks 2 contradicts --load_weights 'checkpoints/dense/best.pth', whose model has --n_blocks 9"),
    (["--load_weights", "sr.pth"], "error: --load_weights 'sr.pth' was trained by app 'SR'; this run trains Deblur"),
    (["--resume", "checkpoints/dense/best.pth", "--exp-load-weights-from", "checkpoints/dense/best.pth"],
     "error: --load_weights starts a new run and --resume continues one"),
])
def test_load_weights_misuse_is_one_error_line(in_process, capsys, argv, expect):  # noqa: F811
    from tests.apps.sr.test_load_weights import _checkpoint

    small_validation_pairs(in_process)
    assert entry_main("train")([*DENSE, "--gan", "off"]) == 0
    _checkpoint(in_process / "sr.pth")
    capsys.readouterr()
    assert entry_main("train")([*LOOP, *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(expect) and "Traceback" not in err, err
