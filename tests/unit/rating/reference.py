"""A faithful copy of Chatbot Arena's ``compute_mle_elo`` (per-battle rows, scikit-learn).

Each battle is duplicated; a tie is a win for model_a in the first copy and for model_b in the
second; LogisticRegression without intercept or penalty on +/-log(BASE) features; Elo =
400 * coef + 1000. A weight is applied by repeating the row, as Arena-Hard does with strong
verdicts. numpy arrays stand in for the pandas frame; the arithmetic is the same.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression

TIE_WINNERS = ("tie", "tie (bothbad)")


def reference_elo(
    model_a: npt.NDArray[np.int64],
    model_b: npt.NDArray[np.int64],
    winner: npt.NDArray[np.str_],
    n_models: int,
    *,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
    tol: float = 1e-8,
) -> npt.NDArray[np.float64]:
    """Ratings in model-index order, centred at 1000 as scikit-learn leaves them."""
    a = np.concatenate([model_a, model_a])
    b = np.concatenate([model_b, model_b])
    w = np.concatenate([winner, winner])
    n = a.shape[0]
    x = np.zeros((n, n_models))
    x[np.arange(n), a] = +math.log(base)
    x[np.arange(n), b] = -math.log(base)
    y = np.zeros(n)
    y[w == "model_a"] = 1.0
    tie = np.isin(w, TIE_WINNERS)
    tie[n // 2 :] = False
    y[tie] = 1.0
    # C=inf is penalty=None, spelled the way current scikit-learn accepts without warning.
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=tol, max_iter=1000)
    lr.fit(x, y)
    return np.asarray(scale * lr.coef_[0] + init, dtype=np.float64)
