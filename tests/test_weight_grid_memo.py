"""The memo of histogram-scheme weight grids (quantsim.calibrate._weight_encoding) returns what a
fresh search returns, and tells apart every setting the search reads."""

from __future__ import annotations

import numpy as np

from aimetcli.kernels.quant import QuantScheme
from aimetcli.options import QuantOptions
from aimetcli.quantsim import calibrate
from aimetcli.quantsim.placement import ParamQuantizer, Placement


def test_the_memo_is_a_fresh_search_and_keys_on_every_setting():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    placement = Placement(unsigned_symmetric=True)
    opts = QuantOptions(param_bw=4, scheme=QuantScheme.TF_ENHANCED)
    pq = ParamQuantizer("w", "weight", "Conv", 4, True, 0)
    calibrate._SEARCHED.clear()
    first = calibrate._weight_encoding(w, pq, opts, placement)
    assert calibrate._weight_encoding(w.copy(), pq, opts, placement) is first  # same bytes: no search
    calibrate._SEARCHED.clear()
    fresh = calibrate._weight_encoding(w, pq, opts, placement)
    np.testing.assert_array_equal(fresh.scale, first.scale)
    np.testing.assert_array_equal(fresh.offset, first.offset)
    other_w = w.copy()
    other_w[0, 0, 0, 0] += 1.0
    per_tensor = ParamQuantizer("w", "weight", "Conv", 4, True, None)
    eight = ParamQuantizer("w", "weight", "Conv", 8, True, 0)
    for args in ((other_w, pq, opts), (w, per_tensor, opts), (w, eight, opts),
                 (w, pq, QuantOptions(param_bw=4, scheme=QuantScheme.PERCENTILE))):
        assert calibrate._weight_encoding(*args, placement) is not first
