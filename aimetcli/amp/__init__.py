"""Mixed precision under an accuracy budget (``ptq --max-drop`` / ``--min-sqnr``), after AIMET's AMP.

``groups``: the quantizer groups (a layer's weight with its output activation; every other
activation on its own), their candidates and the cost model (relative bit-operations, weight
bytes). ``switch``: one sim in which every group's candidate is chosen by boolean graph inputs.
The search itself (phase 1 and phase 2) is ``aimetcli/steps/amp.py`` over
``aimetcli/kernels/amp_search.py`` (pure Python, no model).
"""
