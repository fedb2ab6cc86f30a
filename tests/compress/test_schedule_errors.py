"""Every wrong schedule is refused at build time with file, line, key path, expectation and suggestion."""
import textwrap

import pytest
import torch

import compress
from compress import ScheduleError

from .nets import Plain, Residual, sgd

AGP = """\
version: 1
pruners:
  conv_pruner:
    class: 'AutomatedGradualPruner'
    initial_sparsity : 0.05
    final_sparsity: 0.4
    weights: ['conv1.weight', 'conv2.weight']
policies:
  - pruner:
      instance_name : 'conv_pruner'
    starting_epoch: 0
    ending_epoch: 10
    frequency: 1
"""


def refuse(tmp_path, text: str, *expected: str) -> ScheduleError:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    model = Plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ScheduleError) as info:
        compress.file_config(model, sgd(model), path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    return info.value


def test_good_schedule_builds(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(AGP)
    model = Plain()
    assert isinstance(compress.file_config(model, sgd(model), path), compress.CompressionScheduler)


def test_schedule_error_is_a_value_error():
    assert issubclass(ScheduleError, ValueError)


def test_missing_file(tmp_path):
    model = Plain()
    with pytest.raises(ScheduleError, match="schedule file not found: .*nope.yaml"):
        compress.file_config(model, sgd(model), tmp_path / "nope.yaml")


def test_yaml_syntax_error(tmp_path):
    err = refuse(tmp_path, "pruners:\n  p: {class: X\npolicies: []\n", "not valid YAML", "line 3")
    assert err.line == 3


def test_python_tags_are_refused_not_evaluated(tmp_path):
    refuse(tmp_path, "pruners: !!python/object/apply:os.system ['echo hacked']\n",
           "not valid YAML", "python tags are never evaluated")


def test_unknown_section(tmp_path):
    refuse(tmp_path, AGP.replace("pruners:", "prunners:"), "line 2", "unknown section 'prunners'",
           "did you mean 'pruners'?")


def test_unknown_class_suggests_the_closest(tmp_path):
    refuse(tmp_path, AGP.replace("'AutomatedGradualPruner'", "'AutomatedGradualPrunr'"), "line 4",
           "pruners.conv_pruner.class", "unknown pruner class 'AutomatedGradualPrunr'",
           "did you mean 'AutomatedGradualPruner'?")


def test_unknown_kwarg(tmp_path):
    refuse(tmp_path, AGP.replace("final_sparsity:", "final_sparsty:"), "line 6",
           "pruners.conv_pruner.final_sparsty", "unknown argument 'final_sparsty' for AutomatedGradualPruner",
           "did you mean 'final_sparsity'?")


def test_missing_kwarg(tmp_path):
    refuse(tmp_path, AGP.replace("    final_sparsity: 0.4\n", ""), "line 3", "pruners.conv_pruner",
           "missing required argument 'final_sparsity'")


def test_wrong_type(tmp_path):
    refuse(tmp_path, AGP.replace("final_sparsity: 0.4", "final_sparsity: 'high'"), "line 6",
           "pruners.conv_pruner.final_sparsity", "must be float, got 'high'")


def test_wrong_type_in_list(tmp_path):
    refuse(tmp_path, AGP.replace("['conv1.weight', 'conv2.weight']", "5"), "line 7",
           "weights must be list or str, got 5")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_unit_interval(tmp_path, value):
    refuse(tmp_path, AGP.replace("final_sparsity: 0.4", f"final_sparsity: {value}"), "line 6",
           "pruners.conv_pruner.final_sparsity", "sparsity must be in [0, 1)")


def test_structured_sparsity_outside_unit_interval(tmp_path):
    refuse(tmp_path, """\
        pruners:
          f:
            class: L1RankedStructureParameterPruner
            reg_regims:
              conv1.weight: [1.2, '3D']
        policies:
          - pruner: {instance_name: f}
            epochs: [0]
        """, "line 5", "pruners.f.reg_regims.conv1.weight", "sparsity must be in [0, 1)")


def test_bad_group_type(tmp_path):
    refuse(tmp_path, """\
        pruners:
          f:
            class: L1RankedStructureParameterPruner
            reg_regims:
              conv1.weight: [0.2, 'Filter']
        policies:
          - pruner: {instance_name: f}
            epochs: [0]
        """, "line 5", "expected [sparsity, group type]", "group types: 3D, Filters, Rows, Channels, Cols")


def test_ending_before_start(tmp_path):
    refuse(tmp_path, AGP.replace("ending_epoch: 10", "ending_epoch: 0"), "line 12",
           "policies[0].ending_epoch", "ending_epoch 0 must be after starting_epoch 0")


def test_frequency_not_positive(tmp_path):
    refuse(tmp_path, AGP.replace("frequency: 1", "frequency: 0"), "line 13", "policies[0].frequency",
           "frequency must be an integer >= 1, got 0")


def test_undefined_instance_name(tmp_path):
    refuse(tmp_path, AGP.replace("instance_name : 'conv_pruner'", "instance_name : 'conv_prunner'"), "line 10",
           "policies[0].pruner.instance_name", "instance_name 'conv_prunner' is not defined in pruners",
           "did you mean 'conv_pruner'?")


def test_instance_name_of_another_kind(tmp_path):
    refuse(tmp_path, AGP.replace("  - pruner:", "  - regularizer:"), "line 10",
           "'conv_pruner' is defined under pruners, not regularizers")


def test_weight_the_model_lacks(tmp_path):
    refuse(tmp_path, AGP.replace("'conv2.weight'", "'conv_2.weight'"), "line 7", "pruners.conv_pruner.weights[1]",
           "the model has no parameter 'conv_2.weight'", "did you mean 'conv2.weight'?",
           "model.named_parameters()")


def test_conflicting_pruners_on_the_same_tensor(tmp_path):
    text = AGP.replace("policies:", """\
  level:
    class: SparsityLevelParameterPruner
    levels: {conv2.weight: 0.5}
policies:
  - pruner:
      instance_name: level
    epochs: [5]""")
    refuse(tmp_path, text, "line 15", "policies[1]",
           "pruners 'level' (policy 0) and 'conv_pruner' (policy 1) both prune 'conv2.weight' in epoch 5",
           "give each tensor one pruner at a time: make their epochs disjoint")


def test_two_structured_pruners_on_one_dimension_name_the_coupling(tmp_path):
    """Filters of conv_a and conv_b are coupled by the add: two pruners listing one each meet on both."""
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        pruners:
          a: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.5,
              weights: [conv_a.weight]}
          b: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.25,
              weights: [conv_b.weight]}
        policies:
          - {pruner: {instance_name: a}, epochs: [0]}
          - {pruner: {instance_name: b}, epochs: [0]}
        """))
    model = Residual()
    with pytest.raises(ScheduleError, match=r"pruners 'a' \(policy 0\) and 'b' \(policy 1\) both prune dimension 0 "
                       r"of 'conv_a.bias' in epoch 0: neither lists it; the traced graph couples it to "
                       r"'conv_a.weight' and 'conv_b.weight'"):
        compress.file_config(model, sgd(model), path, dummy_input=torch.zeros(1, 1, 8, 8))


def test_element_wise_and_structured_pruners_may_share_a_tensor(tmp_path):
    """Filter pruning and AGP of one weight in one epoch: the masks combine; AGP's level counts all zeros."""
    path = tmp_path / "ok.yaml"
    path.write_text(AGP.replace("ending_epoch: 10", "ending_epoch: 2").replace("final_sparsity: 0.4",
                                                                              "final_sparsity: 0.75").replace(
        "policies:", """\
  filters:
    class: L1RankedStructureParameterPruner
    reg_regims:
      conv2.weight: [0.5, '3D']
policies:
  - pruner:
      instance_name: filters
    epochs: [1]"""))
    model = Plain()
    sched = compress.file_config(model, sgd(model), path)
    sched.on_epoch_begin(0)
    sched.on_epoch_begin(1)
    w = model.conv2.weight
    assert int((w.flatten(1) == 0).all(1).sum()) == 4  # half of the 8 filters
    assert int((w == 0).sum()) == int(0.75 * w.numel())  # AGP's final 75%, the zero filters' 50% among them


def test_disjoint_pruners_on_the_same_tensor_are_fine(tmp_path):
    text = AGP.replace("policies:", """\
  filters:
    class: L1RankedStructureParameterPruner
    reg_regims:
      conv2.weight: [0.5, '3D']
policies:
  - pruner:
      instance_name: filters
    epochs: [10]""")
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    model = Plain()
    compress.file_config(model, sgd(model), path)


def test_epochs_and_range_together(tmp_path):
    refuse(tmp_path, AGP.replace("    frequency: 1\n", "    epochs: [1, 2]\n"), "policies[0].starting_epoch",
           "give either 'epochs' or 'starting_epoch', not both")


def test_unknown_policy_key(tmp_path):
    refuse(tmp_path, AGP.replace("frequency: 1", "frequncy: 1"), "line 13", "unknown policy key 'frequncy'",
           "did you mean 'frequency'?")


def test_unknown_policy_arg(tmp_path):
    refuse(tmp_path, AGP.replace("instance_name : 'conv_pruner'",
                                 "instance_name : 'conv_pruner'\n      args: {mask_gradient: true}"),
           "line 11", "unknown pruner policy argument 'mask_gradient'", "did you mean 'mask_gradients'?")


def test_duplicate_key(tmp_path):
    refuse(tmp_path, AGP.replace("    final_sparsity: 0.4\n", "    final_sparsity: 0.4\n    final_sparsity: 0.5\n"),
           "line 7", "key 'final_sparsity' appears twice (first on line 6)")


def test_initial_above_final(tmp_path):
    refuse(tmp_path, AGP.replace("initial_sparsity : 0.05", "initial_sparsity : 0.5"), "line 5",
           "initial_sparsity 0.5 is above final_sparsity 0.4")


def test_unsupported_version(tmp_path):
    refuse(tmp_path, AGP.replace("version: 1", "version: 2"), "line 1", "unsupported schedule version 2")


def test_policy_without_component(tmp_path):
    refuse(tmp_path, AGP.replace("  - pruner:\n      instance_name : 'conv_pruner'\n    starting", "  - starting"),
           "line 9", "policies[0]", "a policy names exactly one of pruner, regularizer")


def test_lambda_lr_cannot_be_declared(tmp_path):
    refuse(tmp_path, """\
        lr_schedulers:
          lr: {class: LambdaLR, lr_lambda: 'lambda e: 0.9 ** e'}
        policies:
          - lr_scheduler: {instance_name: lr}
            starting_epoch: 0
            ending_epoch: 3
        """, "line 2", "LambdaLR cannot be declared in a schedule", "takes a Python function")


def test_leader_group_with_different_sizes(tmp_path):
    refuse(tmp_path, """\
        pruners:
          f:
            class: L1RankedStructureParameterPruner
            group_type: Filters
            desired_sparsity: 0.5
            weights: [conv2.weight, conv3.weight]
            group_dependency: Leader
        policies:
          - pruner: {instance_name: f}
            epochs: [0]
        """, "line 2", "'conv3.weight' has 1 filters but the leader 'conv2.weight' has 8")


def test_dict_config_errors_name_the_dict():
    model = Plain()
    with pytest.raises(ScheduleError, match=r"<schedule dict>.*unknown section 'pruner'"):
        compress.dict_config(model, sgd(model), {"pruner": {}})


def test_wrong_choice_suggests_the_closest(tmp_path):
    refuse(tmp_path, """\
        pruners:
          f:
            class: L1RankedStructureParameterPruner
            group_type: Filter
            desired_sparsity: 0.5
            weights: [conv2.weight]
        policies:
          - pruner: {instance_name: f}
            epochs: [0]
        """, "line 4", "pruners.f.group_type", "must be '3D' or 'Filters'", "did you mean 'Filters'?")


def test_a_key_repeated_with_the_same_value_is_taken(tmp_path, caplog):
    """Distiller's ssl_channels-removal_training.yaml lists one weight twice with the same regime."""
    path = tmp_path / "ok.yaml"
    path.write_text(AGP.replace("    final_sparsity: 0.4\n", "    final_sparsity: 0.4\n    final_sparsity: 0.4\n"))
    model = Plain()
    compress.file_config(model, sgd(model), path)
    assert "key 'final_sparsity' repeats line 6 with the same value" in caplog.text
