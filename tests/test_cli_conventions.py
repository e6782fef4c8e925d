"""Help and conventions (issue 16 point 7): every option has help text; -v prints details on
export, evaluate and ptq; --ort-optimization shows basic; AIMET's scheme spellings are
accepted; --bitwidth points to --param-bw/--act-bw; onnxsim's `in.onnx out.onnx` works;
tables that show only their first rows say so, and --all shows every row."""

from __future__ import annotations

import json

import click
import onnx
import pytest
from onnx import helper

from aimetcli.cli import COMMANDS, main
from helpers import bn_inits, bn_node, init, make_model, op_count, rand


def conv_chain(tmp_path, layers: int, with_bn: bool = False):
    """``layers`` 3x3 convs of 4 channels (each with a BN when asked), Relu between them."""
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(init(f"W{i}", rand(4, 4, 3, 3, scale=0.3 * (1 + i % 5))))
        nodes.append(helper.make_node("Conv", [x, f"W{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4))
        y = f"c{i}"
        if with_bn:
            inits += bn_inits(f"bn{i}", 4)
            nodes.append(bn_node(f"bn{i}", y, f"b{i}"))
            y = f"b{i}"
        nodes.append(helper.make_node("Relu", [y], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    path = tmp_path / f"chain{layers}.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 4, 8, 8])], [(x, None)], inits), path)
    return path


def test_every_option_has_help(runner):
    for name in COMMANDS:
        command = main.commands[name]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{name} {param.opts[0]} has no help text"


def test_encoding_version_and_bias_method_help_in_ptq(runner):
    text = " ".join(runner.invoke(main, ["ptq", "--help"]).output.split())
    assert "--encoding-version [0.6.1|1.0.0|2.0.0] AIMET encodings file format" in text
    assert "--bias-correct-method [empirical|analytical|hybrid] empirical: run FP32" in text


def test_ort_optimization_shows_basic(runner, model_path):
    text = runner.invoke(main, ["evaluate", "--help"], terminal_width=200).output
    assert "[none|basic|all|advised]" in text
    r = runner.invoke(main, ["evaluate", str(model_path), str(model_path), "--data", "random:4",
                             "--ort-optimization", "basic", "-q"])
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("spelling,aimet_name", [
    ("tf_enhanced", "post_training_tf_enhanced"),
    ("post_training_tf_enhanced", "post_training_tf_enhanced"),
    ("tf", "post_training_tf"),
    ("min_max", "post_training_tf"),
])
def test_aimet_scheme_spellings(runner, model_path, tmp_path, spelling, aimet_name):
    out = tmp_path / "s.onnx"
    r = runner.invoke(main, ["quantsim", str(model_path), str(out), "--data", "random:4", "--quant-scheme", spelling,
                             "-q"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads((tmp_path / "s.encodings").read_text())
    assert doc["quantizer_args"]["quant_scheme"] == aimet_name


def test_bitwidth_names_param_bw_and_act_bw(runner, model_path, tmp_path):
    r = runner.invoke(main, ["quantsim", str(model_path), "-o", str(tmp_path / "s.onnx"), "--data", "random:4",
                             "--bitwidth", "4"])
    assert r.exit_code == 2
    assert "No such option: --bitwidth; aimetcli calls it --param-bw (weights) and --act-bw" in r.stderr


def test_unknown_option_still_suggests(runner, model_path):
    r = runner.invoke(main, ["fold-bn", str(model_path), "--simplfy"])
    assert r.exit_code == 2 and "--simplify" in r.stderr


@pytest.mark.parametrize("command,extra", [("fold-bn", []), ("equalize", []),
                                           ("bias-correct", ["--method", "analytical"]),
                                           ("quantsim", ["--data", "random:4"])])
def test_positional_output_as_onnxsim(runner, model_path, tmp_path, command, extra):
    out = tmp_path / "out.onnx"
    r = runner.invoke(main, [command, str(model_path), str(out), *extra, "-q"])
    assert r.exit_code == 0, r.stderr
    onnx.checker.check_model(str(out))
    if command == "fold-bn":
        assert op_count(onnx.load(out), "BatchNormalization") == 0


def test_positional_and_option_output_conflict(runner, model_path, tmp_path):
    r = runner.invoke(main, ["fold-bn", str(model_path), str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx")])
    assert r.exit_code == 2 and r.stderr.startswith("Error: two outputs given")
    r = runner.invoke(main, ["fold-bn", str(model_path)])
    assert r.exit_code == 2 and "no output given: add -o FILE (or OUTPUT after MODEL" in r.stderr
    assert not list(tmp_path.glob("*.onnx"))[1:]  # only the input


def test_verbose_export_lists_what_stays_float(runner, model_path, tmp_path):
    sim = tmp_path / "sim.onnx"
    assert runner.invoke(main, ["quantsim", str(model_path), str(sim), "--data", "random:4", "-q"]).exit_code == 0
    quiet = runner.invoke(main, ["export", str(sim), "-o", str(tmp_path / "d1")])
    verbose = runner.invoke(main, ["export", str(sim), "-o", str(tmp_path / "d2"), "-v"])
    assert verbose.exit_code == 0, verbose.stderr
    extra = set(verbose.stderr.splitlines()) - set(quiet.stderr.replace("d1", "d2").splitlines())
    assert extra and all(ln.startswith(("not quantized:", "report.json lists")) for ln in extra), extra


def test_verbose_evaluate_says_how_it_ran(runner, model_path):
    r = runner.invoke(main, ["evaluate", str(model_path), "--data", "random:4", "-v"])
    assert r.exit_code == 0, r.stderr
    assert "onnxruntime graph optimization 'none'" in r.stderr and "samples in" in r.stderr


def test_verbose_ptq_shows_each_scheme(runner, model_path, tmp_path):
    """-v adds one line per quantization tried (min-max, tf-enhanced, ...) with its SQNR."""
    quiet = runner.invoke(main, ["ptq", str(model_path), "-o", str(tmp_path / "a"), "--data", "random:8"])
    r = runner.invoke(main, ["ptq", str(model_path), "-o", str(tmp_path / "b"), "--data", "random:8", "-v"])
    assert r.exit_code == 0, r.stderr

    def tried(text):
        return [ln for ln in text.splitlines() if ln.startswith(("min-max", "tf-enhanced")) and "output SQNR" in ln]

    assert not tried(quiet.stderr)
    lines = tried(r.stderr)
    assert any(ln.startswith("min-max") for ln in lines) and any(ln.startswith("tf-enhanced") for ln in lines)


def test_equalize_table_says_rows_are_left_out(runner, tmp_path):
    path = conv_chain(tmp_path, 18)
    r = runner.invoke(main, ["equalize", str(path), str(tmp_path / "e.onnx")])
    assert r.exit_code == 0, r.stderr
    assert "15 of 18 layers shown, --all for every layer" in r.stderr
    assert sum(f"conv{i} " in r.stderr for i in range(18)) == 15
    r = runner.invoke(main, ["equalize", str(path), str(tmp_path / "e2.onnx"), "--all"])
    assert "layers shown" not in r.stderr
    assert sum(f"conv{i} " in r.stderr for i in range(18)) == 18


def test_fold_table_all(runner, tmp_path):
    path = conv_chain(tmp_path, 21, with_bn=True)
    r = runner.invoke(main, ["fold-bn", str(path), str(tmp_path / "f.onnx")])
    assert "Folded 21 BatchNormalization (--all lists them)" in r.stderr
    r = runner.invoke(main, ["fold-bn", str(path), str(tmp_path / "f2.onnx"), "--all"])
    assert all(f"bn{i} " in r.stderr for i in range(21))


def test_plot_says_layers_are_left_out_and_all_draws_every_one(runner, tmp_path):
    pytest.importorskip("matplotlib")
    path = conv_chain(tmp_path, 18)
    r = runner.invoke(main, ["ranges", str(path), "--plot", str(tmp_path / "r.svg")])
    assert r.exit_code == 0, r.stderr
    assert "16 of 18 layers shown, those of widest spread; --all for every layer" in r.stderr
    # the one-glance overview covers every layer even when the rows show 16
    assert "Spread of every one of the 18 layers" in (tmp_path / "r.svg").read_text()
    panels = (tmp_path / "r.svg").read_text().count("spread ")
    r = runner.invoke(main, ["ranges", str(path), "--plot", str(tmp_path / "all.svg"), "--all"])
    assert r.exit_code == 0 and "layers shown" not in r.stderr
    assert (tmp_path / "all.svg").read_text().count("spread ") > panels
