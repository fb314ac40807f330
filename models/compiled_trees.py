"""A gradient-boosted model's trees as lookup tables: scikit-learn's probabilities, sooner.

Why not ``GradientBoostingClassifier.predict_proba``: on the production
model (100 trees of depth 3) nearly all of its time is per call and per tree
(input validation, the init estimator's own ``predict_proba``, one entry into
Cython per tree), not arithmetic, so one row costs almost as much as a
hundred.  ``CompiledGradientBoosting`` spends a small fraction of that on one
row and less on a batch (docs/benchmarks.md, "What was changed").

How: at build time each tree is padded to a complete tree of the model's
depth, 3 at most (a leaf above the bottom, which a third of the production
model's trees have, becomes a node whose both children are copies of it),
so it has at most 7 internal nodes.  A call compares every row with every
internal node of every tree at once, packs each tree's comparisons into a
7-bit code, and looks the code up in the tree's table of 128 leaf values.
Deeper trees are refused: their tables would have ``2 ** (2 ** depth - 1)``
entries.

Why the probabilities are exactly scikit-learn's (the tests hold the
installed version to it): each step is the same IEEE operation on the same
operands, in the same order.

- scikit-learn casts the inputs to float32 and goes left when
  ``x <= threshold``, the float32 ``x`` widened to compare with the float64
  threshold.  Here the inputs are cast alike and compared with the largest
  float32 at most the threshold: for a float32 ``x`` the two comparisons
  agree, NaN included (false, so right).  Comparisons under a padded leaf
  choose among copies of one value.
- The raw score starts from the init estimator's constant (the prior's
  log-odds, the same for every row; read once from scikit-learn's private
  ``_raw_predict_init``, which the tests would catch changing) and adds ``learning_rate *
  leaf_value`` tree after tree, in order.  The tables hold those products,
  the same doubles scikit-learn computes per call, and the first tree's
  table holds the constant plus them, scikit-learn's first addition;
  ``np.cumsum`` adds the rest left to right (``np.sum`` would add pairwise).
- The probabilities are ``scipy.special.expit`` of the raw score and one
  minus it, as scikit-learn's binomial log-loss computes them.

Anything outside that argument is refused with ``ValueError``: another
estimator, multiclass, the exponential loss, an ``init`` other than the
default prior, trees deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from scipy.special import expit
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.tree._tree import TREE_LEAF, Tree
from sklearn.utils.validation import check_is_fitted

__all__ = ["MAX_DEPTH", "CompiledGradientBoosting", "fastest_classifier"]

_log = logging.getLogger(__name__)

MAX_DEPTH = 3
"""The deepest trees compiled: a tree's table has ``2 ** (2 ** depth - 1)`` leaf values."""


class CompiledGradientBoosting:
    """A fitted binary ``GradientBoostingClassifier`` (log-loss, default init) as tables.

    Satisfies ``service.scoring.Classifier``:
    ``CompiledGradientBoosting(loaded.estimator).predict_proba(inputs)`` equals
    ``loaded.estimator.predict_proba(inputs)`` exactly.  It copies what it needs: refitting
    the estimator afterwards does not change it.
    """

    def __init__(self, estimator: GradientBoostingClassifier) -> None:
        _require_supported(estimator)
        trees: list[Tree] = [regressor.tree_ for regressor in estimator.estimators_[:, 0]]
        depth = max(tree.max_depth for tree in trees)
        if depth > MAX_DEPTH:
            raise ValueError(
                f"trees of depth {depth} are deeper than MAX_DEPTH={MAX_DEPTH}: their lookup "
                f"tables would have 2**{2**depth - 1} entries each"
            )
        n_nodes = 2**depth - 1
        codes = np.arange(2**n_nodes)
        leaf = _leaf_of_code(codes, depth)
        feature = np.empty((n_nodes, len(trees)), dtype=np.intp)
        threshold = np.empty((n_nodes, len(trees)), dtype=np.float64)
        table = np.empty((len(trees), codes.size), dtype=np.float64)
        scale = float(estimator.learning_rate)
        for i, tree in enumerate(trees):
            feature[:, i], threshold[:, i], leaf_nodes = _complete(tree, depth)
            table[i] = scale * tree.value[leaf_nodes[leaf], 0, 0]
        init = estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_)))[0, 0]
        table[0] = init + table[0]

        self._n_features = int(estimator.n_features_in_)
        self._feature = feature
        self._threshold = _float32_at_most(threshold)[:, :, np.newaxis]
        self._bit = (1 << np.arange(n_nodes)).astype(np.uint8)
        self._table = table.ravel()
        self._table_start = np.arange(len(trees)) * codes.size

    def predict_proba(self, inputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Class probabilities, shape ``(n_rows, 2)``, of ``inputs`` of shape ``(n_rows, n)``.

        Column 1 is the estimator's ``classes_[1]``.  Like the service's own call of
        scikit-learn (``assume_finite``), this does not look for NaN or infinity; a wrong
        shape is a ``ValueError``.
        """
        rows = np.asarray(inputs)
        if rows.ndim != 2 or rows.shape[1] != self._n_features:
            raise ValueError(
                f"inputs must have shape (n_rows, {self._n_features}), got {rows.shape}"
            )
        columns = np.ascontiguousarray(rows.T, dtype=np.float32)
        # goes_left[j, i, r]: row r goes left at node j (heap order) of tree i.
        goes_left = columns.take(self._feature, axis=0) <= self._threshold
        # code[i, r]: bit j set when row r goes left at node j of tree i (at most 127: uint8).
        code = np.einsum("jir,j->ir", goes_left.view(np.uint8), self._bit)
        # Rows by trees, in C order, so that the cumulative sum runs along contiguous memory.
        leaf_values = self._table[self._table_start + np.ascontiguousarray(code.T)]
        raw = np.cumsum(leaf_values, axis=1)[:, -1]
        proba = np.empty((rows.shape[0], 2), dtype=np.float64)
        proba[:, 1] = expit(raw)
        proba[:, 0] = 1 - proba[:, 1]
        return proba


def fastest_classifier(
    estimator: GradientBoostingClassifier,
) -> CompiledGradientBoosting | GradientBoostingClassifier:
    """The compiled form of ``estimator`` when it compiles exactly, else ``estimator`` itself."""
    try:
        return CompiledGradientBoosting(estimator)
    except ValueError as exc:
        _log.warning("scoring with scikit-learn's predict_proba, slower: %s", exc)
        return estimator


def _require_supported(estimator: GradientBoostingClassifier) -> None:
    """Raise ``ValueError`` naming what keeps ``estimator`` from compiling exactly."""
    if not isinstance(estimator, GradientBoostingClassifier):
        raise ValueError(f"expected a GradientBoostingClassifier, got {type(estimator).__name__}")
    check_is_fitted(estimator)
    if estimator.n_classes_ != 2:
        raise ValueError(f"only binary models compile; this one has {estimator.n_classes_} classes")
    if estimator.loss != "log_loss":
        raise ValueError(f"only loss='log_loss' compiles, not {estimator.loss!r}")
    if estimator.init is not None:
        raise ValueError(
            f"only the default init (the class prior) compiles, not {estimator.init!r}"
        )


def _complete(
    tree: Tree, depth: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """``tree`` padded to a complete tree of ``depth``: the feature and threshold of each
    internal node in heap order, and the node of ``tree`` behind each bottom slot.

    A leaf above the bottom becomes a node (feature 0, threshold 0) whose two children
    are copies of the leaf.
    """
    feature = np.empty(2**depth - 1, dtype=np.intp)
    threshold = np.empty(2**depth - 1, dtype=np.float64)
    nodes = np.zeros(1, dtype=np.intp)
    for level in range(depth):
        slots = slice(2**level - 1, 2 ** (level + 1) - 1)
        is_leaf = tree.children_left[nodes] == TREE_LEAF
        feature[slots] = np.where(is_leaf, 0, tree.feature[nodes])
        threshold[slots] = np.where(is_leaf, 0.0, tree.threshold[nodes])
        left = np.where(is_leaf, nodes, tree.children_left[nodes])
        right = np.where(is_leaf, nodes, tree.children_right[nodes])
        nodes = np.column_stack([left, right]).ravel()
    return feature, threshold, nodes


def _leaf_of_code(codes: npt.NDArray[np.intp], depth: int) -> npt.NDArray[np.intp]:
    """The bottom slot a complete tree of ``depth`` ends in, per code: bit ``j`` of a code
    says whether the walk goes left at internal node ``j`` (heap order)."""
    n_nodes = 2**depth - 1
    node = np.zeros_like(codes)
    for _ in range(depth):
        goes_left = (codes >> node) & 1
        node = 2 * node + 2 - goes_left
    slot: npt.NDArray[np.intp] = node - n_nodes
    return slot


def _float32_at_most(threshold: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The largest float32 at most each threshold: a float32 ``x`` is at most one exactly
    when it is at most the other."""
    rounded = threshold.astype(np.float32)
    return np.where(rounded > threshold, np.nextafter(rounded, np.float32(-np.inf)), rounded)
