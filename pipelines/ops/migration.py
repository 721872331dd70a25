"""Population migration of one scored day, computed from its prediction rows (pure functions).

Definitions (the same words as the prediction contract, docs/design.md section 6):

- **flow** ``i -> j``: a user whose current interests hold category ``i`` (``current_categories``
  with ``current_strengths``) has ``j`` among its emerging categories (``emerging_categories``:
  predicted, new to the user). Each user with at least one emerging category carries one unit
  of flow, split by its current shares (normalised to sum to 1; a zero share carries nothing)
  times an equal part of each emerging category, so ``weight(i, j)`` is a number of users and
  the weights of a day add up to the number of users with an emerging category. ``users(i, j)``
  counts the users having that pair with a non-zero share.
- **migrating user**: the user's best-ranked predicted category is new to it (it is in its
  emerging list). The share of migrating users is reported per *dominant* current category
  (``current_categories[0]``). On logs where people mostly return to what they know (most
  e-commerce logs) hardly anyone's *most likely* category is new, so this share is near 0.
- **expected new-category users**: the sum of ``migration_score`` over users, the number of users
  expected to touch at least one category new to them in the horizon (each score is that
  probability for one user). It is the day's headline of how many users move, where the
  migrating share is a strict count of users whose move is their most likely outcome.
- **interest strength** of a category: the mean over users of its current share (current) and
  of its share of the user's normalised predicted scores (predicted); both sum to at most 1
  over categories, so the two bars are comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NO_CATEGORY = "(none)"
ROW_COLUMNS = ["user_id", "current_categories", "current_strengths", "predicted_categories", "predicted_scores",
               "emerging_categories", "migration_score"]
FLOW_SCHEMA = pa.schema([("from_category", pa.string()), ("to_category", pa.string()), ("users", pa.int64()),
                         ("weight", pa.float64()), ("share", pa.float64())])
TOP_FLOW_SCHEMA = pa.schema([*FLOW_SCHEMA, ("previous_share", pa.float64()), ("share_change", pa.float64())])
CATEGORY_SCHEMA = pa.schema([("category", pa.string()), ("users", pa.int64()), ("migrating_users", pa.int64()),
                             ("migrating_share", pa.float64()), ("mean_migration_score", pa.float64()),
                             ("current_strength", pa.float64()), ("predicted_strength", pa.float64())])


def _lists(rows: pa.Table, column: str) -> tuple[np.ndarray, pa.Array]:
    """(row index of every element, the flattened elements) of a list column."""
    lists = rows[column].combine_chunks()
    return (np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64),
            pc.list_flatten(lists))


def _vocabulary(*arrays: pa.Array) -> pa.Array:
    return pc.unique(pa.concat_arrays([a.cast(pa.string()) for a in arrays])).sort()


def _codes(values: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    return np.asarray(pc.index_in(values, value_set=vocabulary).to_numpy(zero_copy_only=False), dtype=np.int64)


def _per_user_share(users: np.ndarray, values: np.ndarray, n_users: int) -> np.ndarray:
    """``values`` divided by the sum of their user's values (0 where a user's sum is 0)."""
    totals = np.bincount(users, weights=values, minlength=n_users)
    safe = np.where(totals[users] > 0, totals[users], 1.0)
    return np.where(totals[users] > 0, values / safe, 0.0)


def flow_matrix(rows: pa.Table) -> pa.Table:
    """Every non-zero flow ``from_category -> to_category`` of the rows (FLOW_SCHEMA), heaviest first."""
    from scipy import sparse  # only the report task needs it

    n_users = rows.num_rows
    cur_user, cur_cat = _lists(rows, "current_categories")
    _, cur_strength = _lists(rows, "current_strengths")
    em_user, em_cat = _lists(rows, "emerging_categories")
    if n_users == 0 or len(em_cat) == 0:
        return FLOW_SCHEMA.empty_table()
    vocabulary = _vocabulary(cur_cat, em_cat, pa.array([NO_CATEGORY]))
    strengths = np.asarray(cur_strength.to_numpy(zero_copy_only=False), dtype=np.float64)
    shares = _per_user_share(cur_user, np.clip(np.nan_to_num(strengths), 0.0, None), n_users)
    # A user without current interests (or with zero strengths) migrates from "(none)".
    has_current = np.bincount(cur_user, weights=shares, minlength=n_users) > 0
    none_code = int(_codes(pa.array([NO_CATEGORY]), vocabulary)[0])
    lonely = np.flatnonzero(~has_current)
    cur_rows = np.concatenate([cur_user, lonely])
    cur_cols = np.concatenate([_codes(cur_cat, vocabulary), np.full(len(lonely), none_code)])
    cur_vals = np.concatenate([shares, np.ones(len(lonely))])
    em_vals = 1.0 / np.bincount(em_user, minlength=n_users)[em_user]
    shape = (n_users, len(vocabulary))
    current = sparse.csr_matrix((cur_vals, (cur_rows, cur_cols)), shape=shape)
    emerging = sparse.csr_matrix((em_vals, (em_user, _codes(em_cat, vocabulary))), shape=shape)
    for matrix in (current, emerging):
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
    weight = (current.T @ emerging).tocsr()
    users = (_ones(current).T @ _ones(emerging)).tocsr()
    # All values are positive, so both products have the same non-zeros: their sorted CSR data line up.
    for matrix in (weight, users):
        matrix.sort_indices()
    rows_i = np.repeat(np.arange(weight.shape[0]), np.diff(weight.indptr))
    cols_j, data, counts = weight.indices, weight.data, users.data.astype(np.int64)
    order = np.lexsort((cols_j, rows_i, -data))
    rows_i, cols_j, data, counts = rows_i[order], cols_j[order], data[order], counts[order]
    total = float(data.sum())
    return pa.table([pc.take(vocabulary, pa.array(rows_i)), pc.take(vocabulary, pa.array(cols_j)),
                     pa.array(counts, pa.int64()), pa.array(data), pa.array(data / total if total else data)],
                    schema=FLOW_SCHEMA)


def _ones(matrix: Any) -> Any:
    """The same sparse matrix with every stored value 1 (who has the category, not how much)."""
    ones = matrix.copy()
    ones.data = np.ones_like(ones.data, dtype=np.float64)
    return ones


def top_flows(flows: pa.Table, previous: pa.Table | None, n: int = 20) -> pa.Table:
    """The ``n`` heaviest flows with their share the week before and the change of share
    (TOP_FLOW_SCHEMA; previous_share 0 for a flow absent then, null when there is no week before)."""
    head = flows.slice(0, n)
    earlier: dict[tuple[str, str], float] = {}
    if previous is not None:
        for f, t, s in zip(previous["from_category"].to_pylist(), previous["to_category"].to_pylist(),
                           previous["share"].to_pylist(), strict=True):
            earlier[(f, t)] = s
    before, change = [], []
    for f, t, s in zip(head["from_category"].to_pylist(), head["to_category"].to_pylist(),
                       head["share"].to_pylist(), strict=True):
        prior = None if previous is None else earlier.get((f, t), 0.0)
        before.append(prior)
        change.append(None if prior is None else s - prior)
    return pa.table([*head.columns, pa.array(before, pa.float64()), pa.array(change, pa.float64())],
                    schema=TOP_FLOW_SCHEMA)


def category_table(rows: pa.Table) -> pa.Table:
    """Per category (CATEGORY_SCHEMA): users whose dominant current category it is, how many of them
    migrate and their mean migration score, and the current and predicted interest strength."""
    n_users = rows.num_rows
    cur_user, cur_cat = _lists(rows, "current_categories")
    _, cur_strength = _lists(rows, "current_strengths")
    pred_user, pred_cat = _lists(rows, "predicted_categories")
    _, pred_score = _lists(rows, "predicted_scores")
    em_user, em_cat = _lists(rows, "emerging_categories")
    vocabulary = _vocabulary(cur_cat, pred_cat, em_cat, pa.array([NO_CATEGORY]))
    k = len(vocabulary)
    cur_codes, pred_codes, em_codes = (_codes(a, vocabulary) for a in (cur_cat, pred_cat, em_cat))
    strengths = np.clip(np.nan_to_num(np.asarray(cur_strength.to_numpy(zero_copy_only=False), float)), 0, None)
    scores = np.clip(np.nan_to_num(np.asarray(pred_score.to_numpy(zero_copy_only=False), float)), 0, None)
    denominator = max(n_users, 1)
    current_strength = np.bincount(cur_codes, weights=strengths, minlength=k) / denominator
    predicted_strength = np.bincount(pred_codes, weights=_per_user_share(pred_user, scores, n_users),
                                     minlength=k) / denominator

    dominant = np.full(n_users, int(_codes(pa.array([NO_CATEGORY]), vocabulary)[0]))
    first_cur = _first_of_each(cur_user)
    dominant[cur_user[first_cur]] = cur_codes[first_cur]
    top_predicted = np.full(n_users, -1)
    first_pred = _first_of_each(pred_user)
    top_predicted[pred_user[first_pred]] = pred_codes[first_pred]
    migrating = np.zeros(n_users, dtype=bool)
    hits = top_predicted[em_user] == em_codes
    migrating[em_user[hits]] = True
    migration = np.nan_to_num(np.asarray(rows["migration_score"].to_numpy(), dtype=float))
    users = np.bincount(dominant, minlength=k)
    movers = np.bincount(dominant, weights=migrating, minlength=k).astype(np.int64)
    score_sum = np.bincount(dominant, weights=migration, minlength=k)
    keep = np.flatnonzero((users > 0) | (current_strength > 0) | (predicted_strength > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(users > 0, movers / np.maximum(users, 1), np.nan)
        mean_score = np.where(users > 0, score_sum / np.maximum(users, 1), np.nan)
    order = keep[np.lexsort((keep, -predicted_strength[keep] - current_strength[keep]))]
    return pa.table([pc.take(vocabulary, pa.array(order)), pa.array(users[order], pa.int64()),
                     pa.array(movers[order], pa.int64()), pa.array(share[order], from_pandas=True),
                     pa.array(mean_score[order], from_pandas=True), pa.array(current_strength[order]),
                     pa.array(predicted_strength[order])], schema=CATEGORY_SCHEMA)


def _first_of_each(parents: np.ndarray) -> np.ndarray:
    """Positions of the first element of every list (``parents`` is sorted: Arrow keeps row order)."""
    if len(parents) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], parents[1:] != parents[:-1]]))


def day_summary(rows: pa.Table, flows: pa.Table, categories: pa.Table) -> dict[str, Any]:
    """Headline numbers of a day: users, users with an emerging category, migrating users and share,
    and the users expected to touch a category new to them (the sum of ``migration_score``)."""
    users = rows.num_rows
    scores = np.nan_to_num(np.asarray(rows["migration_score"].to_numpy(zero_copy_only=False), dtype=float))
    expected = float(np.clip(scores, 0.0, 1.0).sum())
    movers = int(pc.sum(categories["migrating_users"]).as_py() or 0)
    with_emerging = int(pc.sum(pc.greater(pc.list_value_length(rows["emerging_categories"]), 0)).as_py() or 0)
    return {"users": users, "users_with_emerging": with_emerging, "migrating_users": movers,
            "migrating_share": movers / users if users else None,
            "expected_new_category_users": round(expected, 1),
            "expected_new_category_share": expected / users if users else None, "flows": flows.num_rows,
            "flow_weight": float(pc.sum(flows["weight"]).as_py() or 0.0)}
