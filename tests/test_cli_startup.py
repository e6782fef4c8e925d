"""Start-up (issue 16 point 6): --help, --version, a command's --help and usage errors import
neither onnx, onnx-ir, onnxruntime nor numpy; the command list is known without importing
the commands. The few names spelled in the light modules agree with the library's."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnx_ir", "onnxruntime", "numpy")

LIGHT_INVOCATIONS = [
    ["--help"],
    ["--version"],
    ["-h"],
    *[[name, "--help"] for name in
      ("ptq", "fold-bn", "equalize", "adaround", "bias-correct", "quantsim", "evaluate", "export", "ranges",
       "analyze")],
    ["fold-bn"],  # missing MODEL
    ["fold-bn", "m.onnx"],  # no output
    ["fold-bn", "m.onnx", "a.onnx", "-o", "b.onnx"],  # two outputs
    ["quantsim", "m.onnx", "-o", "s.onnx", "--data", "random:4", "--bitwidth", "4"],
    ["ptq", "m.onnx", "-o", "out", "--data", "random:4", "--quant-scheme", "bogus"],
    ["no-such-command"],
    # refused by the up-front path checks, before the library is imported
    ["ptq", "m.onnx", "-o", "nodir/sub/out", "--data", "random:4"],
    ["fold-bn", "m.onnx", "nodir/f.onnx"],
    ["export", "m.onnx", "-o", "-"],
]


def test_help_version_and_usage_errors_import_nothing_heavy():
    script = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "import aimetcli.cli\n"
        f"for args in {LIGHT_INVOCATIONS!r}:\n"
        "    r = CliRunner().invoke(aimetcli.cli.main, args)\n"
        "    assert r.exit_code in (0, 1, 2) and r.exception is None or isinstance(r.exception, SystemExit), "
        "(args, r.exit_code, r.output, r.exception)\n"
        "    assert 'internal error' not in r.output, (args, r.output)\n"
        f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    assert not heavy, (args, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_listed_command_loads_and_its_short_help_is_its_docstring():
    from aimetcli.cli import COMMANDS, main

    assert list(COMMANDS) == ["ptq", "fold-bn", "equalize", "adaround", "bias-correct", "quantsim", "evaluate",
                              "export", "ranges", "analyze"]
    for name, (_, _, short) in COMMANDS.items():
        command = main.commands[name]
        assert command.name == name
        assert command.help.strip().splitlines()[0] == short, f"cli.COMMANDS[{name!r}] differs from its docstring"


def test_top_level_help_lists_workflow_order_starting_with_ptq():
    from click.testing import CliRunner

    from aimetcli.cli import COMMANDS, main

    text = CliRunner().invoke(main, ["--help"]).output
    flow = text[text.index("Typical flow"):text.index("Options:")]
    flow_order = [line.split()[1] for line in flow.splitlines() if line.strip().startswith("aimetcli ")]
    assert flow_order == list(COMMANDS)
    listed = text[text.index("Commands:"):]
    positions = [listed.index(f"  {name} ") for name in COMMANDS]
    assert positions == sorted(positions)


@pytest.mark.parametrize("light,heavy", [
    ("aimetcli.commands._options:SCHEMES", "aimetcli.kernels.quant:QuantScheme"),
    ("aimetcli.commands.bias:METHODS", "aimetcli.kernels.bias:METHODS"),
    ("aimetcli.commands._options:encoding_version_option", "aimetcli.encodings:SUPPORTED_VERSIONS"),
])
def test_light_spellings_agree_with_the_library(light, heavy):
    import importlib

    def get(ref):
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)

    value, truth = get(light), get(heavy)
    if attr_is_option := callable(value) and not isinstance(value, tuple):
        import click

        @value
        @click.command()
        def probe(**_):
            pass

        value = next(p for p in probe.params if p.name == "encoding_version").type.choices
    assert attr_is_option or isinstance(value, tuple)
    truth = [t.value for t in truth] if isinstance(truth, type) else list(truth)
    assert list(value) == truth
