"""The facade's steps, one module each: fold-bn and equalize (rewrite), AdaRound, quantsim,
evaluate and bias correction. ptq (aimetcli/ptq_flow.py) and export (aimetcli/export.py) are steps too.

Every step takes its model as a path, an ``onnx.ModelProto`` or an onnx-ir model
(:func:`aimetcli.model_ops.as_model`), does one thing and returns a result dataclass with
``to_json()``; none prints. aimetcli.api re-exports them; nothing here imports aimetcli.api.
"""
