"""The training loop: row-wise AdamW, chunked negatives, keep-best, determinism, resume, history."""

from __future__ import annotations

import logging
import math
import mmap
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from twotower_pipeline.config.errors import PipelineInputError, RunInterruptedError
from twotower_pipeline.data.sampling import PositiveSet, build_training_examples
from twotower_pipeline.model.build import build_model
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.layers import full_rows, weighted_rows
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.training import examples, memory, row_optimizers, sparse_rows
from twotower_pipeline.training import loop as training
from twotower_pipeline.training import selection as training_selection
from twotower_pipeline.training.checkpoints import checkpoint_path
from twotower_pipeline.training.examples import (
    draw_groups,
    groups_from_examples,
    training_positives,
)
from twotower_pipeline.training.loop import EpochPass, fit, train_epoch
from twotower_pipeline.training.losses import bce_no_skill
from twotower_pipeline.training.optimizers import make_optimizer
from twotower_pipeline.training.row_optimizers import RowwiseAdamW, RowwiseRMSProp
from twotower_pipeline.training.selection import model_candidates
from twotower_pipeline.training.sparse_rows import SparseRows
from twotower_pipeline.training.spec import (
    TrainingDivergedError,
    TrainingSpec,
    learning_rate_at,
    resolve_device,
)

N_USERS, N_ITEMS, NEG = 12, 10, 3

# The user tower reads a 3-item history; items carry their taste group as a feature token,
# so item ids are also dropped at random in training.
HISTORY_TOWER = dict(
    user_id=False,
    user_id_dropout=0.0,
    history_length=3,
    history_pooling="recency",
    item_id_dropout=0.2,
    item_feature_vocab=3,
    item_feature_width=1,
)
ID_ONLY = dict(
    user_id=True,
    user_id_dropout=0.0,
    history_length=0,
    history_pooling="mean",
    item_id_dropout=0.0,
    item_feature_vocab=1,
    item_feature_width=0,
)


@pytest.fixture
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two taste groups: users 0-5 like items 0-4, users 6-11 like items 5-9.

    Each user has 3 of their group's items in train (t = 10, 20, 30) and a 4th held
    out at t = 40.
    """
    train_rows, val_rows = [], []
    for user in range(N_USERS):
        group = 0 if user < 6 else 5
        liked = [group + (user + j) % 5 for j in range(4)]
        train_rows += [(user, item, 10 * (j + 1)) for j, item in enumerate(liked[:3])]
        val_rows.append((user, liked[3], 40))
    columns = ["user", "item", "timestamp"]
    train = pd.DataFrame(train_rows, columns=columns).astype(np.int64)
    val = pd.DataFrame(val_rows, columns=columns).astype(np.int64)
    return train, val


def make_spec(tmp_path, **overrides) -> TrainingSpec:
    values = dict(
        seed=7,
        num_epochs=3,
        neg_ratio=NEG,
        batch_size=8,
        learning_rate=0.05,
        weight_decay=0.01,
        scale_lr_ratio=1.0,
        lr_schedule="cosine",
        warmup_epochs=0.0,
        eval_max_users=None,
        resample_each_epoch=True,
        eval_k=3,
        eval_chunk_size=5,
        chunk_positives=16,  # 36 positives: three chunks per epoch
        optimizer="rowwise",
        compile_rows=False,
        device="cpu",
        checkpoint_dir=str(tmp_path / "checkpoints"),
        resume=False,
        progress_bar=False,
        loss="bce",
        log_q=True,
    )
    return TrainingSpec(**(values | overrides))


def new_model(towers: dict = HISTORY_TOWER) -> TwoTowerModel:
    torch.manual_seed(3)
    model = TwoTowerModel(
        TwoTowerConfig(
            n_users=N_USERS,
            n_items=N_ITEMS,
            embedding_dim=8,
            hidden_dims=[],
            init_std=0.1,
            logit_scale=1.0,
            max_logit_scale=100.0,
            user_feature_vocab=1,
            user_feature_width=0,
            **towers,
        )
    )
    if model.config.item_feature_width:
        model.set_side_information(item_tokens=torch.tensor([[1]] * 5 + [[2]] * 5))
    return model


def first_examples(train: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    return build_training_examples(train, N_ITEMS, NEG, np.random.default_rng([seed, 0]))


def timeless(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=["examples_per_second", "threads", "seconds"])


def assert_same_weights(a: TwoTowerModel, b: TwoTowerModel) -> None:
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name


# --- row-wise updates -----------------------------------------------------------------------
@pytest.fixture
def sparse_small_tables(monkeypatch):
    """Row-wise updates even for the tiny tables of these tests (no whole-table shortcut)."""
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 0)


def test_sparse_rows_give_the_gradient_rows_of_a_dense_embedding(sparse_small_tables):
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(10, 3))
    ids = torch.tensor([[2, 7, 2], [9, 7, 7]])  # 6 lookups < 10 rows: only rows 2, 7, 9
    weights = torch.randn(2, 3, 3)
    (full_rows(table, ids) * weights).sum().backward()

    rows = SparseRows()
    out = rows(table, ids)
    assert torch.equal(out, full_rows(table, ids).detach())
    (out * weights).sum().backward()
    [(touched_table, touched_ids, leaf)] = rows.touched
    assert touched_table is table and sorted(touched_ids.tolist()) == [2, 7, 9]
    assert torch.allclose(leaf.grad, table.grad[touched_ids], atol=1e-6)
    assert table.grad[[0, 1, 3, 4, 5, 6, 8]].eq(0).all()  # nobody else has a gradient


@pytest.mark.parametrize("through", ["full_rows", "sparse_rows"])
def test_weighted_rows_pool_like_gather_scale_and_sum(through, sparse_small_tables):
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(20, 3))  # more rows than the 12 lookups
    ids = torch.tensor([[[2, 7, 0], [9, 7, 7]], [[1, 1, 2], [0, 0, 0]]])  # (2, 2) bags of 3
    weights = torch.rand(2, 2, 3, requires_grad=True)
    upstream = torch.randn(2, 2, 3)
    expected = (table[ids] * weights.unsqueeze(-1)).sum(-2)
    expected.backward(upstream)
    table_grad, weights_grad = table.grad.clone(), weights.grad.clone()
    weights.grad = None

    rows = SparseRows() if through == "sparse_rows" else full_rows
    pooled = weighted_rows(rows, table, ids, weights)
    assert torch.allclose(pooled, expected.detach(), atol=1e-6)
    table.grad = None
    pooled.backward(upstream)
    assert torch.allclose(weights.grad, weights_grad, atol=1e-6)
    if through == "sparse_rows":
        [(_, touched_ids, leaf)] = rows.touched
        assert sorted(touched_ids.tolist()) == [0, 1, 2, 7, 9]
        assert torch.allclose(leaf.grad, table_grad[touched_ids], atol=1e-6)
    else:
        assert torch.allclose(table.grad, table_grad, atol=1e-6)


def test_a_step_reads_each_table_once():
    rows = SparseRows()
    table = torch.randn(10, 3)
    rows(table, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="once per step"):
        rows(table, torch.tensor([3]))


def test_a_table_smaller_than_the_lookups_is_taken_whole_with_the_dense_gradient(
    sparse_small_tables,
):
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(4, 3))
    ids = torch.tensor([0, 3, 3, 1, 0])
    (full_rows(table, ids) ** 2).sum().backward()
    rows = SparseRows()
    (rows(table, ids) ** 2).sum().backward()
    [(_, touched_ids, leaf)] = rows.touched
    whole = (
        leaf.grad if touched_ids is None else torch.zeros(4, 3).index_add(0, touched_ids, leaf.grad)
    )
    assert torch.allclose(whole, table.grad, atol=1e-6)


def rowwise_and_reference_tables(lr=0.01, weight_decay=0.1):
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    rowwise = start.clone()
    reference = torch.nn.Parameter(start.clone())
    optimizer = RowwiseAdamW([rowwise], lr=lr, weight_decay=weight_decay)
    adamw = torch.optim.AdamW([reference], lr=lr, weight_decay=weight_decay)
    return rowwise, reference, optimizer, adamw


@pytest.mark.parametrize("chunk_rows", [2048, 4])  # 4: the 6 touched rows in two parts
@pytest.mark.parametrize("through", ["sparse_rows", "distinct_ids"])
def test_rowwise_adamw_equals_torch_adamw_when_every_row_is_touched(
    through, chunk_rows, sparse_small_tables, monkeypatch
):
    monkeypatch.setattr(row_optimizers, "OPTIMIZER_CHUNK_ROWS", chunk_rows)
    rowwise, reference, optimizer, adamw = rowwise_and_reference_tables()
    for step in range(5):
        ids = torch.randperm(6, generator=torch.Generator().manual_seed(step)).repeat(2)
        target = torch.randn(12, 3, generator=torch.Generator().manual_seed(100 + step))
        if through == "sparse_rows":
            rows = SparseRows()
            ((rows(rowwise, ids) - target) ** 2).sum().backward()
            touched = rows.touched
        else:  # the optimizer handed the distinct ids of every row
            leaf = rowwise.clone().requires_grad_()
            ((F.embedding(ids, leaf) - target) ** 2).sum().backward()
            touched = [(rowwise, torch.arange(6), leaf)]
        optimizer.step(touched)
        adamw.zero_grad()
        ((full_rows(reference, ids) - target) ** 2).sum().backward()
        adamw.step()
        assert torch.allclose(rowwise, reference.detach(), rtol=1e-6, atol=1e-7), step


def rmsprop_by_hand(table, v, step, touched_rows, grad, lr, weight_decay, beta2=0.999, eps=1e-8):
    """Row-wise RMSprop written one row at a time: the rule as docs/training.md states it."""
    for row in touched_rows:
        v[row] = beta2 * v[row] + (1 - beta2) * float((grad[row] ** 2).mean())
        root = math.sqrt(v[row] / (1 - beta2**step))
        table[row] = table[row] * (1 - lr * weight_decay) - lr * grad[row] / (root + eps)


@pytest.mark.parametrize("chunk_rows", [2048, 2])  # 2: the touched rows in several parts
@pytest.mark.parametrize("whole", [False, True], ids=["touched_rows", "whole_table"])
def test_rowwise_rmsprop_follows_its_rule_row_by_row(chunk_rows, whole, monkeypatch):
    monkeypatch.setattr(row_optimizers, "OPTIMIZER_CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 10**6 if whole else 0)
    torch.manual_seed(0)
    table = torch.randn(10, 3)
    expected = table.clone().double()
    v = [0.0] * 10
    optimizer = RowwiseRMSProp([table], lr=0.05, weight_decay=0.2)
    for step, ids in enumerate([[2, 5, 5, 7], [5, 1], [0, 2, 9, 9, 9]], start=1):
        ids = torch.tensor(ids)
        target = torch.randn(len(ids), 3, generator=torch.Generator().manual_seed(step))
        reference = expected.clone().requires_grad_()
        ((reference[ids] - target.double()) ** 2).sum().backward()
        rows = SparseRows()
        ((rows(table, ids) - target) ** 2).sum().backward()
        optimizer.step(rows.touched)
        # The whole-table path touches every row (a zero gradient still moves v and decay).
        touched = range(10) if whole else sorted(set(ids.tolist()))
        rmsprop_by_hand(expected, v, step, touched, reference.grad, 0.05, 0.2)
        assert torch.allclose(table.double(), expected, atol=1e-6), step
    assert optimizer.state[0].tolist() == pytest.approx(v, rel=1e-5)


@pytest.mark.parametrize("optimizer_class", [RowwiseAdamW, RowwiseRMSProp])
def test_rows_a_step_does_not_touch_keep_their_values_exactly(optimizer_class, sparse_small_tables):
    torch.manual_seed(0)
    table = torch.randn(10, 3)
    before = table.clone()
    optimizer = optimizer_class([table], lr=0.1, weight_decay=0.5)
    for ids in (torch.tensor([2, 5, 5]), torch.tensor([7])):
        rows = SparseRows()
        rows(table, ids).sum().backward()
        optimizer.step(rows.touched)
    changed = (table != before).any(dim=1)
    assert changed.tolist() == [i in (2, 5, 7) for i in range(10)]
    # Rows 2 and 5 have optimizer state after step 1, yet step 2 (row 7 only) leaves them
    # be: decay and updates are lazy, unlike dense AdamW.
    after_first = table[[2, 5]].clone()
    rows = SparseRows()
    rows(table, torch.tensor([0])).sum().backward()
    optimizer.step(rows.touched)
    assert torch.equal(table[[2, 5]], after_first)


def test_rowwise_rmsprop_keeps_one_value_a_row():
    tables = [torch.randn(10, 3), torch.randn(4, 8)]
    optimizer = RowwiseRMSProp(tables, lr=0.1, weight_decay=0.0)
    assert [tuple(s.shape) for s in optimizer.state] == [(10,), (4,)]
    assert [tuple(s.shape) for s in RowwiseAdamW(tables, 0.1, 0.0).state] == [(10, 2, 3), (4, 2, 8)]


def steps_of_both(eager, compiled, eager_table, compiled_table, counts):
    """Take the same steps with both optimizers: random rows, a new row count and rate each."""
    for step, count in enumerate(counts, start=1):
        ids = torch.randint(
            0, len(eager_table), (count,), generator=torch.Generator().manual_seed(step)
        )
        target = torch.randn(
            count, eager_table.shape[1], generator=torch.Generator().manual_seed(step)
        )
        for optimizer, table in ((eager, eager_table), (compiled, compiled_table)):
            optimizer.lr = 0.05 / step  # a schedule: the rate changes between steps
            rows = SparseRows()
            ((rows(table, ids) - target) ** 2).sum().backward()
            optimizer.step(rows.touched)
        yield step


@pytest.mark.parametrize("optimizer_class", [RowwiseAdamW, RowwiseRMSProp])
def test_the_compiled_row_update_follows_the_eager_one(optimizer_class, monkeypatch):
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 0)  # rows, as on a large table
    torch.manual_seed(0)
    eager_table = torch.randn(40, 4)
    compiled_table = eager_table.clone()
    eager = optimizer_class([eager_table], lr=0.05, weight_decay=0.2)
    compiled = optimizer_class([compiled_table], lr=0.05, weight_decay=0.2, compiled=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for step in steps_of_both(eager, compiled, eager_table, compiled_table, [7, 13, 5, 29]):
        assert torch.allclose(compiled_table, eager_table, rtol=1e-5, atol=1e-6), step
        assert torch.allclose(compiled.state[0], eager.state[0], rtol=1e-5, atol=1e-9), step
    assert compiled.kernel is not None  # every step ran compiled
    # One kernel for every row count and rate: no compile per step.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1


def test_the_compiled_row_update_gives_the_same_bits_every_time(monkeypatch):
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 0)
    torch.manual_seed(0)
    first_table = torch.randn(40, 4)
    second_table = first_table.clone()
    first, second = (
        RowwiseAdamW([table], lr=0.05, weight_decay=0.2, compiled=True)
        for table in (first_table, second_table)
    )
    for step in steps_of_both(first, second, first_table, second_table, [7, 13, 5, 29]):
        assert torch.equal(first_table, second_table), step
        assert torch.equal(first.state[0], second.state[0]), step


def test_a_row_update_that_cannot_compile_runs_eagerly_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 0)

    def without_a_compiler(function, **options):
        def compiled(*arguments):
            raise RuntimeError("Compiler: cc is not found.\n(the rest of the report)")

        return compiled

    monkeypatch.setattr(torch, "compile", without_a_compiler)
    torch.manual_seed(0)
    eager_table = torch.randn(40, 4)
    compiled_table = eager_table.clone()
    eager = RowwiseRMSProp([eager_table], lr=0.05, weight_decay=0.2)
    compiled = RowwiseRMSProp([compiled_table], lr=0.05, weight_decay=0.2, compiled=True)
    with caplog.at_level(logging.WARNING, logger="twotower_pipeline.training.row_optimizers"):
        for _ in steps_of_both(eager, compiled, eager_table, compiled_table, [7, 13, 5]):
            assert torch.equal(compiled_table, eager_table)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "training.compile_rows: the row update could not be compiled (RuntimeError: Compiler: "
        "cc is not found.); row updates run eagerly (the same rule, slower on large tables)"
    ]
    assert compiled.kernel is None


def test_a_stop_during_the_compiled_update_stops_the_run(monkeypatch):
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 0)

    def interrupted_while_compiling(function, **options):
        def compiled(*arguments):
            raise RunInterruptedError("stopped by SIGTERM", 143)

        return compiled

    monkeypatch.setattr(torch, "compile", interrupted_while_compiling)
    table = torch.randn(40, 4)
    optimizer = RowwiseAdamW([table], lr=0.05, weight_decay=0.2, compiled=True)
    rows = SparseRows()
    rows(table, torch.tensor([1, 2, 3])).sum().backward()
    with pytest.raises(RunInterruptedError):  # not taken for a compiler failure
        optimizer.step(rows.touched)


def test_an_error_after_the_kernel_has_run_is_raised_not_retried_eagerly(monkeypatch):
    monkeypatch.setattr(sparse_rows, "WHOLE_TABLE_VALUES", 0)
    calls = []

    def works_once(function, **options):
        def compiled(*arguments):
            calls.append(1)
            if len(calls) > 1:  # the kernel may have written part of the rows by now
                raise RuntimeError("out of memory")
            return function(*arguments)

        return compiled

    monkeypatch.setattr(torch, "compile", works_once)
    table = torch.randn(40, 4)
    optimizer = RowwiseAdamW([table], lr=0.05, weight_decay=0.2, compiled=True)
    for step in range(2):
        rows = SparseRows()
        rows(table, torch.tensor([1, 2, 3])).sum().backward()
        if step == 0:
            optimizer.step(rows.touched)
        else:
            with pytest.raises(RuntimeError, match="out of memory"):
                optimizer.step(rows.touched)


@pytest.mark.parametrize(
    "setting, optimizer, rows, compiled",
    [
        ("auto", "rowwise", 1_000, False),  # small tables: updated whole, nothing to compile
        ("auto", "rowwise", 100_000, True),
        ("auto", "rowwise_rmsprop", 100_000, False),  # measured: no consistent gain
        (True, "rowwise_rmsprop", 100_000, True),
        ("auto", "dense", 100_000, False),
        (True, "rowwise", 1_000, True),
        (False, "rowwise_rmsprop", 100_000, False),
    ],
)
def test_compile_rows_auto_compiles_where_a_table_is_large(
    setting, optimizer, rows, compiled, tmp_path
):
    model = TwoTowerModel(replace(new_model(ID_ONLY).config, n_items=rows, embedding_dim=4))
    spec = make_spec(tmp_path, optimizer=optimizer, compile_rows=setting)
    optimizers = make_optimizer(model, spec)
    assert (optimizers.rows is not None and optimizers.rows.kernel is not None) == compiled


def test_a_table_on_huge_pages_keeps_its_values_and_starts_on_a_2_mib_boundary(monkeypatch):
    monkeypatch.setattr(memory, "HUGE_PAGE_MIN_BYTES", 0)
    table = torch.randn(1000, 3)
    moved = memory.on_huge_pages(table)
    assert torch.equal(moved, table) and moved.dtype == table.dtype
    moved[0, 0] += 1.0  # a copy, not a view of the original
    assert not torch.equal(moved, table)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux: where the kernel can back it with huge pages
        assert moved.data_ptr() % (2 << 20) == 0


def test_a_small_table_stays_where_it_is():
    table = torch.randn(10, 3)
    assert memory.on_huge_pages(table) is table


def test_tables_on_huge_pages_train_and_resume_exactly_as_on_plain_pages(
    data, tmp_path, monkeypatch
):
    train, val = data
    plain_model = new_model()
    plain = fit(plain_model, train, val, first_examples(train), make_spec(tmp_path / "plain"))
    monkeypatch.setattr(memory, "HUGE_PAGE_MIN_BYTES", 0)  # every table, moment and scratch
    spec = make_spec(tmp_path / "huge")
    with monkeypatch.context() as patch:
        kill_in_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(new_model(), train, val, first_examples(train), spec)
    huge_model = new_model()
    huge = fit(huge_model, train, val, first_examples(train), replace(spec, resume=True))
    pd.testing.assert_frame_equal(timeless(huge), timeless(plain))
    assert_same_weights(huge_model, plain_model)


def test_a_table_of_few_values_is_updated_whole_whatever_the_lookups():
    table = torch.randn(10, 3)
    rows = SparseRows()
    rows(table, torch.tensor([2])).sum().backward()
    [(_, touched_ids, leaf)] = rows.touched
    assert touched_ids is None and leaf.shape == (10, 3)  # 30 values <= WHOLE_TABLE_VALUES


@pytest.mark.parametrize(
    "optimizer, row_class", [("rowwise", RowwiseAdamW), ("rowwise_rmsprop", RowwiseRMSProp)]
)
def test_the_logit_scale_is_not_weight_decayed_and_learns_at_its_ratio(
    optimizer, row_class, tmp_path
):
    model = new_model()
    optimizers = make_optimizer(
        model, make_spec(tmp_path, weight_decay=0.5, scale_lr_ratio=0.1, optimizer=optimizer)
    )
    assert type(optimizers.rows) is row_class
    groups = optimizers.dense.param_groups
    [scale_group] = [g for g in groups if any(p is model.log_scale for p in g["params"])]
    assert scale_group["weight_decay"] == 0.0 and len(scale_group["params"]) == 1
    optimizers.set_lr(0.2)
    assert scale_group["lr"] == pytest.approx(0.02)
    assert optimizers.rows.lr == pytest.approx(0.2)
    # Row-wise: the tables belong to the row optimizer, the rest to the dense one, once each.
    dense_ids = {id(p) for g in groups for p in g["params"]}
    table_ids = {id(t) for t in model.sparse_tables()}
    assert {id(t) for t in optimizers.rows.tables} == table_ids
    assert dense_ids | table_ids == {id(p) for p in model.parameters()}
    assert not dense_ids & table_ids
    dense = make_optimizer(new_model(), make_spec(tmp_path, optimizer="dense"))
    assert dense.rows is None
    assert sum(len(g["params"]) for g in dense.dense.param_groups) == len(
        list(new_model().parameters())
    )
    with pytest.raises(ValueError, match="training.optimizer"):
        make_optimizer(new_model(), make_spec(tmp_path, optimizer="sparse"))


@pytest.mark.parametrize(
    "rows, optimizer, hinted",
    [(1_000, "rowwise", False), (1_000, "rowwise_rmsprop", False), (1_000, "dense", False)]
    + [(100_000, "rowwise", True), (100_000, "rowwise_rmsprop", False)],
)
def test_large_tables_under_rowwise_adamw_get_a_hint_for_rmsprop(
    rows, optimizer, hinted, tmp_path, caplog
):
    model = TwoTowerModel(replace(new_model(ID_ONLY).config, n_items=rows, embedding_dim=2))
    with caplog.at_level(logging.INFO, logger="twotower_pipeline.training.optimizers"):
        make_optimizer(model, make_spec(tmp_path, optimizer=optimizer))
    hints = [r.getMessage() for r in caplog.records if "rowwise_rmsprop" in r.getMessage()]
    assert len(hints) == hinted
    if hinted:
        assert hints[0].startswith(f"embedding tables of up to {rows} rows")


def test_the_scale_learns_at_its_own_ratio_of_the_learning_rate(data, tmp_path):
    train, val = data
    frozen, learning = new_model(), new_model()
    spec = make_spec(tmp_path, num_epochs=2, learning_rate=0.04)
    fit(frozen, train, val, first_examples(train), replace(spec, scale_lr_ratio=0.0))
    fit(learning, train, val, first_examples(train), replace(spec, scale_lr_ratio=1.0))
    assert frozen.logit_scale == pytest.approx(1.0, abs=1e-6)
    assert abs(learning.logit_scale - 1.0) > 0.02


# --- examples and negatives -----------------------------------------------------------------
def test_epoch_zero_trains_on_the_persisted_examples_and_later_epochs_draw_what_the_sampler_draws(
    data,
):
    train, _ = data
    groups = groups_from_examples(first_examples(train), NEG)
    assert groups.items.shape == (len(train), 1 + NEG)
    assert torch.equal(groups.items[:, 0], torch.tensor(train["item"].to_numpy()))
    positives = PositiveSet(train["user"].to_numpy(), train["item"].to_numpy(), N_ITEMS)
    drawn = draw_groups(train, positives, NEG, np.random.default_rng([7, 2]), None)
    expected = groups_from_examples(
        build_training_examples(train, N_ITEMS, NEG, np.random.default_rng([7, 2])), NEG
    )
    assert torch.equal(drawn.items, expected.items) and torch.equal(drawn.users, expected.users)
    assert not torch.equal(drawn.items, groups.items)  # a fresh draw, not epoch 0's


def test_examples_in_another_layout_or_of_other_positives_are_rejected(data, tmp_path):
    train, val = data
    examples = first_examples(train)
    with pytest.raises(ValueError, match="another neg_ratio"):
        groups_from_examples(examples, NEG + 1)
    with pytest.raises(ValueError, match="one positive followed by"):
        groups_from_examples(examples.sample(frac=1.0, random_state=0), NEG)
    shuffled = train.sample(frac=1.0, random_state=0)
    with pytest.raises(ValueError, match="do not match train_interactions"):
        fit(new_model(), shuffled, val, examples, make_spec(tmp_path))


def record_negative_draws(monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    draws = []
    real = examples.sample_negatives

    def recording(users, positives, neg_ratio, rng, probabilities=None):
        drawn = real(users, positives, neg_ratio, rng, probabilities)
        draws.append((users.copy(), drawn.copy()))
        return drawn

    monkeypatch.setattr(examples, "sample_negatives", recording)
    return draws


def test_negatives_drawn_per_chunk_are_never_the_users_positives_and_repeat_for_a_seed(
    data, tmp_path, monkeypatch
):
    train, val = data
    draws = record_negative_draws(monkeypatch)
    spec = make_spec(tmp_path, num_epochs=3)
    fit(new_model(), train, val, first_examples(train), spec)
    # Epoch 1 trains on the persisted examples; epochs 2 and 3 draw per chunk of 16, 16, 4.
    assert [users.size for users, _ in draws] == [16, 16, 4] * 2
    positives = PositiveSet(train["user"].to_numpy(), train["item"].to_numpy(), N_ITEMS)
    for users, negatives in draws:
        assert negatives.shape == (users.size, NEG)
        assert not positives.contains(users.repeat(NEG), negatives.ravel()).any()
    # Every positive of an epoch gets its negatives exactly once.
    epoch_users = np.sort(np.concatenate([users for users, _ in draws[:3]]))
    assert epoch_users.tolist() == sorted(train["user"].tolist())

    first_run = [negatives for _, negatives in draws]
    draws.clear()
    fit(
        new_model(),
        train,
        val,
        first_examples(train),
        replace(spec, checkpoint_dir=str(tmp_path / "b")),
    )
    assert all(np.array_equal(a, b) for (_, a), b in zip(draws, first_run, strict=True))
    draws.clear()
    fit(new_model(), train, val, first_examples(train), replace(spec, seed=8))
    assert not all(np.array_equal(a, b) for (_, a), b in zip(draws, first_run, strict=True))


def test_training_loss_is_bce_with_logits_on_the_raw_logits(data, tmp_path):
    train, _ = data
    groups = groups_from_examples(first_examples(train), NEG)
    model = new_model(ID_ONLY)
    with torch.no_grad():
        model.log_scale.fill_(np.log(30.0))  # large logits: a second sigmoid would be obvious
        logits = model(groups.users, groups.items)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    expected = F.binary_cross_entropy_with_logits(logits, labels).item()
    frozen = make_optimizer(model, make_spec(tmp_path, learning_rate=0.0, weight_decay=0.0))
    loss, n_examples = train_epoch(
        model,
        frozen,
        training_positives(train, N_USERS, 0, torch.device("cpu")),
        EpochPass(
            lambda chunk, rows: groups.items[rows, 1:],
            batch_size=len(train),
            chunk_positives=len(train),
            generator=torch.Generator().manual_seed(0),
        ),
    )
    assert n_examples == len(train) * (1 + NEG)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert loss > 1.0  # saturated raw logits give a large BCE; sigmoid(sigmoid(x)) stays below 1


# --- runs -----------------------------------------------------------------------------------
def test_history_has_one_row_per_epoch_and_marks_one_chosen(data, tmp_path):
    train, val = data
    history = fit(new_model(), train, val, first_examples(train), make_spec(tmp_path))
    assert list(history.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_auc",
        "no_skill_loss",
        "recall@3",
        "ndcg@3",
        "logit_scale",
        "learning_rate",
        "examples_per_second",
        "threads",
        "seconds",
        "chosen",
    ]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["chosen"].dtype == bool and history["chosen"].sum() == 1
    assert np.isfinite(history.drop(columns="chosen").to_numpy(dtype=float)).all()


# Without momentum a row moves only in the steps that touch it: on these 36 positives
# row-wise RMSprop's id-only towers need 10 epochs where AdamW's need 6 (measured: at 6 the
# kept epoch still ranks one user's groups the wrong way round, at 10 none).
@pytest.mark.parametrize(
    "optimizer, epochs", [("rowwise", 6), ("rowwise_rmsprop", 10), ("dense", 6)]
)
@pytest.mark.parametrize("towers", [ID_ONLY, HISTORY_TOWER], ids=["id_only", "history"])
def test_the_model_learns_the_two_taste_groups(data, tmp_path, towers, optimizer, epochs):
    train, val = data
    spec = make_spec(tmp_path, num_epochs=epochs, lr_schedule="constant", optimizer=optimizer)
    model = new_model(towers)
    history = fit(model, train, val, first_examples(train), spec)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    scores = model.catalogue_scorer(train, val)(np.arange(N_USERS))
    # Every user scores its own group's items above the other group's, on average.
    assert (scores[:6, :5].mean(1) > scores[:6, 5:].mean(1)).all()
    assert (scores[6:, 5:].mean(1) > scores[6:, :5].mean(1)).all()


def test_same_seed_gives_identical_history_and_weights(data, tmp_path):
    train, val = data
    model_a, model_b = new_model(), new_model()
    a = fit(model_a, train, val, first_examples(train), make_spec(tmp_path / "a"))
    torch.manual_seed(999)  # whatever the caller's random state, the run is the same
    b = fit(model_b, train, val, first_examples(train), make_spec(tmp_path / "b"))
    pd.testing.assert_frame_equal(timeless(a), timeless(b))
    assert_same_weights(model_a, model_b)


def fake_evaluations(recalls: list[float], snapshots: list[dict]):
    """Return an evaluate_epoch stand-in that reports the given recalls and records weights."""
    calls = iter(recalls)

    def evaluate(model, *args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        recall = next(calls)
        return {"val_loss": 0.5, "val_auc": 0.7, "recall@3": recall, "ndcg@3": recall}

    return evaluate


def test_the_best_validation_epoch_is_kept_and_marked_chosen(data, tmp_path, monkeypatch):
    train, val = data
    snapshots: list[dict] = []
    monkeypatch.setattr(training, "evaluate_epoch", fake_evaluations([0.1, 0.3, 0.2], snapshots))
    model = new_model()
    history = fit(model, train, val, first_examples(train), make_spec(tmp_path))
    assert history["chosen"].tolist() == [False, True, False]
    assert history["recall@3"].tolist() == [0.1, 0.3, 0.2]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
    assert not torch.equal(model.item_id, snapshots[2]["item_id"])  # epoch 3 was different


def test_the_best_epoch_survives_a_resume(data, tmp_path, monkeypatch):
    train, val = data
    spec = make_spec(tmp_path)
    snapshots: list[dict] = []
    monkeypatch.setattr(training, "evaluate_epoch", fake_evaluations([0.1, 0.3], snapshots))
    kill_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), train, val, first_examples(train), spec)
    monkeypatch.setattr(training, "train_epoch", train_epoch)
    monkeypatch.setattr(training, "evaluate_epoch", fake_evaluations([0.2], snapshots))
    model = new_model()
    history = fit(model, train, val, first_examples(train), replace(spec, resume=True))
    assert history["chosen"].tolist() == [False, True, False]
    assert torch.equal(model.item_id, snapshots[1]["item_id"])


def kill_in_epoch(monkeypatch, epoch: int) -> None:
    """Make training.train_epoch die (as a killed process would) when epoch `epoch` starts."""
    real = training.train_epoch
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", dying)


@pytest.mark.parametrize("optimizer", ["rowwise", "rowwise_rmsprop"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(
    optimizer, data, tmp_path, monkeypatch
):
    train, val = data
    uninterrupted = new_model()
    spec = make_spec(tmp_path / "full", num_epochs=4, optimizer=optimizer)
    full = fit(uninterrupted, train, val, first_examples(train), spec)

    cut = replace(spec, checkpoint_dir=str(tmp_path / "cut"))
    with monkeypatch.context() as patch:
        kill_in_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(new_model(), train, val, first_examples(train), cut)

    resumed = new_model()  # a fresh process: weights and random state come from the checkpoint
    history = fit(resumed, train, val, first_examples(train), replace(cut, resume=True))
    pd.testing.assert_frame_equal(timeless(history), timeless(full))
    assert_same_weights(resumed, uninterrupted)
    last_full, last_cut = (
        torch.load(checkpoint_path(run), weights_only=True)["model"] for run in (spec, cut)
    )
    for name, tensor in last_full.items():  # the last epoch too, not only the chosen one
        assert torch.equal(tensor, last_cut[name]), name


def test_a_fresh_run_ignores_a_checkpoint_left_by_an_earlier_run(data, tmp_path):
    train, val = data
    spec = make_spec(tmp_path, num_epochs=2)
    fit(new_model(), train, val, first_examples(train), spec)
    history = fit(new_model(), train, val, first_examples(train), spec)
    assert history["epoch"].tolist() == [1, 2]


def test_a_fresh_run_keeps_the_earlier_checkpoint_until_it_writes_its_own(
    data, tmp_path, monkeypatch
):
    train, val = data
    spec = make_spec(tmp_path, num_epochs=2)
    fit(new_model(), train, val, first_examples(train), spec)
    path = checkpoint_path(spec)
    before = torch.load(path, weights_only=True)
    kill_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), train, val, first_examples(train), spec)
    after = torch.load(path, weights_only=True)
    assert len(after["history"]) == 2
    assert torch.equal(after["model"]["item_id"], before["model"]["item_id"])


def test_resume_without_a_checkpoint_is_a_clear_error(data, tmp_path):
    train, val = data
    spec = make_spec(tmp_path, resume=True)
    with pytest.raises(PipelineInputError, match="no checkpoint at .*resume=false"):
        fit(new_model(), train, val, first_examples(train), spec)


def test_resume_refuses_a_checkpoint_written_with_other_training_settings(data, tmp_path):
    train, val = data
    fit(new_model(), train, val, first_examples(train), make_spec(tmp_path, num_epochs=1))
    other = make_spec(tmp_path, num_epochs=2, learning_rate=0.01, resume=True)
    with pytest.raises(ValueError, match="learning_rate: 0.05 -> now 0.01"):
        fit(new_model(), train, val, first_examples(train), other)


def test_resume_refuses_a_checkpoint_of_another_seed_or_model(data, tmp_path):
    train, val = data
    fit(new_model(), train, val, first_examples(train), make_spec(tmp_path, num_epochs=1))
    again = make_spec(tmp_path, num_epochs=2, resume=True)
    with pytest.raises(ValueError, match="another model or seed"):
        fit(new_model(), train, val, first_examples(train), replace(again, seed=8))
    with pytest.raises(ValueError, match="another model or seed"):
        fit(new_model(ID_ONLY), train, val, first_examples(train), again)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    train, val = data
    spec = make_spec(tmp_path)
    real_forward = TwoTowerModel.forward
    steps = {"n": 0}
    steps_per_epoch = 5  # chunks of 16, 16, 4 positives in batches of 8

    def poisoned_in_epoch_3(self, users, items, history=None, rows=full_rows):
        logits = real_forward(self, users, items, history, rows)
        if self.training:
            steps["n"] += 1
            if steps["n"] > 2 * steps_per_epoch:
                return logits * float("nan")
        return logits

    monkeypatch.setattr(TwoTowerModel, "forward", poisoned_in_epoch_3)
    with pytest.raises(TrainingDivergedError, match=r"epoch 3.*last good checkpoint \(epoch 2\)"):
        fit(new_model(), train, val, first_examples(train), spec)
    state = torch.load(checkpoint_path(spec), weights_only=True)
    assert len(state["history"]) == 2
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def test_cosine_schedule_starts_at_the_learning_rate_and_decays(tmp_path):
    spec = make_spec(tmp_path, num_epochs=4, learning_rate=0.1)
    assert [learning_rate_at(spec, e) for e in range(4)] == pytest.approx(
        [0.1, 0.08536, 0.05, 0.01464], abs=1e-5
    )
    assert learning_rate_at(replace(spec, lr_schedule="constant"), 3) == 0.1
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate_at(replace(spec, lr_schedule="linear"), 0)


def test_the_device_is_cpu_without_cuda_and_asking_for_cuda_there_is_an_error(
    data, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="training.device is cuda but no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("gpu")
    train, val = data
    with pytest.raises(ValueError, match="no CUDA device"):
        fit(new_model(), train, val, first_examples(train), make_spec(tmp_path, device="cuda"))


def test_one_log_line_per_epoch_and_no_progress_bar_off_a_terminal(
    data, tmp_path, caplog, monkeypatch
):
    train, val = data
    monkeypatch.setenv("CI", "true")
    spec = make_spec(tmp_path, num_epochs=3, progress_bar=True)
    assert not training._show_progress(spec)
    with caplog.at_level(logging.INFO, logger="twotower_pipeline.training.loop"):
        fit(new_model(), train, val, first_examples(train), spec)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3 and "train_loss" in lines[0] and "val_loss" in lines[0]


def test_training_node_returns_embeddings_keyed_by_original_ids(data, tmp_path):
    train, val = data
    user_index = pd.DataFrame(
        {"user": np.arange(N_USERS), "user_id": [f"u{i}" for i in range(N_USERS)]}
    )
    item_index = pd.DataFrame(
        {"item": np.arange(N_ITEMS), "item_id": [f"i{i}" for i in range(N_ITEMS)]}
    )
    item_tokens = pd.DataFrame({"item": np.arange(N_ITEMS), "tokens": [[1]] * 5 + [[2]] * 5})
    user_tokens = pd.DataFrame({"user": np.arange(N_USERS), "tokens": [[]] * N_USERS})
    spec = make_spec(tmp_path, num_epochs=2)
    not_training_keys = {
        "seed",
        "num_epochs",
        "neg_ratio",
        "eval_k",
        "eval_chunk_size",
        "eval_max_users",
    }
    model, config, history, users, items, _ = train_two_tower(
        first_examples(train, seed=1),
        train,
        val,
        user_index,
        item_index,
        seed=1,
        neg_ratio=NEG,
        logit_scale=1.0,
        num_epochs=2,
        model={
            "embedding_dim": 8,
            "hidden_dims": [],
            "init_std": 0.1,
            "max_logit_scale": 100.0,
            **{k: v for k, v in HISTORY_TOWER.items() if not k.startswith("item_feature")},
        },
        training={k: v for k, v in vars(spec).items() if k not in not_training_keys},
        negative_sampling={"distribution": "uniform", "popularity_alpha": 0.75},
        evaluation={"headline_k": 3, "chunk_size": 5, "max_users": None},
        item_feature_tokens=item_tokens,
        user_feature_tokens=user_tokens,
        feature_encoders={"item": {"vocab_size": 3}, "user": {"vocab_size": 1}},
    )
    assert config["n_users"] == N_USERS and config["item_feature_vocab"] == 3
    assert len(history) == 2 and "recall@3" in history.columns and history["chosen"].sum() == 1
    assert users["user_id"].tolist() == user_index["user_id"].tolist()
    assert items["item_id"].tolist() == item_index["item_id"].tolist()
    item_vectors = np.stack(items["embedding"].to_numpy())
    user_vectors = np.stack(users["embedding"].to_numpy())
    assert item_vectors.shape == (N_ITEMS, 8) and user_vectors.shape == (N_USERS, 8)
    assert np.allclose(np.linalg.norm(item_vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(user_vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(item_vectors, model.all_item_vectors().numpy())
    # A user's vector reads everything known after training: train and validation.
    scores = model.catalogue_scorer(pd.concat([train, val]))(np.arange(N_USERS)).numpy()
    assert np.allclose(model.logit_scale * user_vectors @ item_vectors.T, scores, atol=1e-5)


# --- model selection on validation ----------------------------------------------------------
def test_candidates_are_the_configured_block_then_each_alternative_that_changes_something():
    model = {"user_id": False, "history_length": 3}
    selection = {
        "enabled": True,
        "alternatives": {"same": {"user_id": False}, "with_id": {"user_id": True}},
    }
    assert model_candidates(model, selection) == [
        ("configured", model),
        ("with_id", {"user_id": True, "history_length": 3}),
    ]
    assert model_candidates(model, {**selection, "enabled": False}) == [("configured", model)]


# A model block without item features (the node is handed none).
SELECTION_BLOCK = {
    "embedding_dim": 8,
    "hidden_dims": [],
    "init_std": 0.1,
    "max_logit_scale": 100.0,
    **{k: v for k, v in HISTORY_TOWER.items() if not k.startswith("item_feature")},
}


def untrained(block: dict) -> TwoTowerModel:
    """Return a real, untrained model of a candidate block (what the fakes below hand back)."""
    return build_model(
        block,
        N_USERS,
        N_ITEMS,
        1.0,
        torch.zeros(N_ITEMS, 0, dtype=torch.int64),
        torch.zeros(N_USERS, 0, dtype=torch.int64),
        None,
    )


def select(data, tmp_path, model_selection: dict, evaluation: dict | None = None, training=None):
    """Run the training node on SELECTION_BLOCK with the given model_selection."""
    train, val = data
    return train_two_tower(
        first_examples(train),
        train,
        val,
        pd.DataFrame({"user": np.arange(N_USERS), "user_id": np.arange(N_USERS)}),
        pd.DataFrame({"item": np.arange(N_ITEMS), "item_id": np.arange(N_ITEMS)}),
        1,
        NEG,
        1.0,
        2,
        SELECTION_BLOCK,
        {"checkpoint_dir": str(tmp_path), **(training or {})},
        {},
        evaluation or {"headline_k": 3},
        model_selection=model_selection,
    )


@pytest.mark.parametrize(
    ("recalls", "chosen"),
    [({False: 0.2, True: 0.3}, "user_id"), ({False: 0.2, True: 0.2}, "configured")],
    ids=["the_better_validation_wins", "a_tie_keeps_the_configured_block"],
)
def test_the_node_keeps_the_candidate_with_the_best_validation_recall(
    data, tmp_path, monkeypatch, recalls, chosen
):
    folders = []

    def trained(training, block, *args):  # a real model, a history with a known recall
        folders.append(training["checkpoint_dir"])
        recall = recalls[block["user_id"]]
        history = pd.DataFrame(
            {"epoch": [1, 2], "recall@3": [0.1, recall], "chosen": [False, True]}
        )
        return untrained(block), history

    monkeypatch.setattr(training_selection, "train_candidate", trained)
    model, config, history, _, _, selection = select(
        data, tmp_path, {"enabled": True, "alternatives": {"user_id": {"user_id": True}}}
    )
    assert selection["chosen"] == chosen and config["user_id"] == (chosen == "user_id")
    assert [
        (c["name"], c["validation_recall@3"], c["chosen"]) for c in selection["candidates"]
    ] == [
        ("configured", 0.2, chosen == "configured"),
        ("user_id", recalls[True], chosen == "user_id"),
    ]
    assert selection["candidates"][1]["model"] == {"user_id": True}
    assert history["recall@3"].iloc[-1] == recalls[config["user_id"]]
    # The configured block checkpoints where the docs say, an alternative in its own folder.
    assert folders == [str(tmp_path), f"{tmp_path}/user_id"]


@pytest.mark.parametrize(
    ("ensemble_recall", "chosen"),
    [(0.35, "ensemble"), (0.3, "user_id")],
    ids=["kept_when_validation_ranks_it_best", "a_tie_keeps_the_single_model"],
)
def test_the_node_keeps_the_ensemble_of_candidates_only_when_validation_ranks_it_best(
    data, tmp_path, monkeypatch, ensemble_recall, chosen
):
    recalls = {False: 0.2, True: 0.3}

    def trained(training, block, *args):
        history = pd.DataFrame({"epoch": [1], "recall@3": [recalls[block["user_id"]]]})
        return untrained(block), history.assign(chosen=True)

    measured = []

    def ranking(model, train, val, k, *args):
        measured.append(model)
        return {f"recall@{k}": ensemble_recall}

    monkeypatch.setattr(training_selection, "train_candidate", trained)
    monkeypatch.setattr(training_selection, "validation_ranking", ranking)
    model, config, history, users, items, selection = select(
        data,
        tmp_path,
        {"enabled": True, "alternatives": {"user_id": {"user_id": True}}, "ensemble": True},
        {"headline_k": 3, "chunk_size": 5, "max_users": None},
    )
    [ensemble] = measured
    assert isinstance(ensemble, TowerEnsemble) and ensemble.config.names == [
        "configured",
        "user_id",
    ]
    assert [(c["name"], c["chosen"]) for c in selection["candidates"]] == [
        ("configured", False),
        ("user_id", chosen == "user_id"),
        ("ensemble", chosen == "ensemble"),
    ]
    assert selection["candidates"][2]["model"] == {"members": "configured + user_id"}
    assert selection["chosen"] == chosen and (model is ensemble) == (chosen == "ensemble")
    assert ("members" in config) == (chosen == "ensemble")
    # The curve is the best single candidate's either way; the vectors are the chosen model's.
    assert history["recall@3"].tolist() == [0.3]
    width = 16 if chosen == "ensemble" else 8
    assert np.stack(items["embedding"]).shape == (N_ITEMS, width)
    assert np.allclose(np.linalg.norm(np.stack(users["embedding"]), axis=1), 1.0, atol=1e-5)


def test_a_candidate_that_diverges_is_named_in_the_error(data, tmp_path, monkeypatch):
    train, val = data

    def diverging(training, block, *args):  # the configured block trains, the wide one not
        if block["embedding_dim"] == 32:
            raise TrainingDivergedError("training diverged in epoch 3: loss is nan")
        history = pd.DataFrame({"epoch": [1], "recall@3": [0.2], "chosen": [True]})
        return None, history

    monkeypatch.setattr(training_selection, "train_candidate", diverging)
    with pytest.raises(TrainingDivergedError, match=r"candidate 'wide' \(model.embedding_dim=32\)"):
        train_two_tower(
            first_examples(train),
            train,
            val,
            pd.DataFrame({"user": np.arange(N_USERS)}),
            pd.DataFrame({"item": np.arange(N_ITEMS)}),
            1,
            NEG,
            1.0,
            2,
            {"embedding_dim": 8, "user_id": False},
            {"checkpoint_dir": str(tmp_path)},
            {},
            {"headline_k": 3},
            model_selection={"enabled": True, "alternatives": {"wide": {"embedding_dim": 32}}},
        )


def test_a_softmax_run_records_the_loss_of_no_skill_on_its_own_batches(data, tmp_path):
    train, val = data
    spec = make_spec(tmp_path, loss="softmax", num_epochs=2)
    history = fit(new_model(), train, val, first_examples(train), spec)
    # With logQ, equal scores do not cost log(batch + neg_ratio): the run measures it.
    assert np.isfinite(history["no_skill_loss"]).all()
    assert (history["no_skill_loss"] != pytest.approx(np.log(spec.batch_size + NEG))).all()
    bce = fit(new_model(), train, val, first_examples(train), make_spec(tmp_path / "bce"))
    assert bce["no_skill_loss"].tolist() == pytest.approx([bce_no_skill(NEG)] * 3)


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_item_biases_learn_that_one_item_is_every_users_positive(data, tmp_path, loss):
    train, val = data
    # Item 7 becomes a positive of every user (at t = 5, before the rest of its history).
    popular = pd.DataFrame({"user": np.arange(N_USERS), "item": 7, "timestamp": 5})
    train = pd.concat([train, popular]).drop_duplicates(["user", "item"]).astype(np.int64)
    model = new_model(HISTORY_TOWER | {"item_bias": True})
    spec = make_spec(tmp_path, loss=loss, num_epochs=6, lr_schedule="constant")
    fit(model, train, val, first_examples(train), spec)
    bias = model.item_bias.detach().squeeze(1)
    assert int(bias.argmax()) == 7
    assert bias[7] > bias[[i for i in range(N_ITEMS) if i != 7]].max() + 0.05


# The history reads the item tower's vectors: one read of the item tables serves the scored
# items and the history in a step (pooled and attention towers alike).
SHARED_TOWERS = {
    "pooled": HISTORY_TOWER | {"history_reads_item_tower": True},
    "attention": HISTORY_TOWER
    | {
        "history_reads_item_tower": True,
        "history_pooling": "attention",
        "attention_blocks": 1,
        "attention_heads": 1,
        "attention_dropout": 0.0,
    },
}


@pytest.mark.parametrize("loss", ["bce", "softmax"])
@pytest.mark.parametrize("towers", SHARED_TOWERS.values(), ids=SHARED_TOWERS.keys())
def test_a_history_that_reads_the_item_tower_trains_row_wise_and_learns_the_groups(
    data, tmp_path, towers, loss
):
    train, val = data
    model = new_model(towers | {"item_bias": True})
    assert model.history_table is None
    spec = make_spec(tmp_path, num_epochs=6, lr_schedule="constant", loss=loss)
    history = fit(model, train, val, first_examples(train), spec)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    scores = model.catalogue_scorer(train, val)(np.arange(N_USERS))
    assert (scores[:6, :5].mean(1) > scores[:6, 5:].mean(1)).all()
    assert (scores[6:, 5:].mean(1) > scores[6:, :5].mean(1)).all()


def test_a_candidate_trains_with_its_own_loss_and_rate(data, tmp_path, monkeypatch):
    seen = {}

    def recording(training, block, *args):
        seen[training["checkpoint_dir"]] = (training, block)
        history = pd.DataFrame({"epoch": [1], "recall@3": [0.2], "chosen": [True]})
        return new_model(), history

    monkeypatch.setattr(training_selection, "train_candidate", recording)
    own = {"loss": "softmax", "learning_rate": 0.02}
    alternatives = {"softmax_bias": {"item_bias": True, "training": own}}
    select(
        data,
        tmp_path,
        {"enabled": True, "alternatives": alternatives},
        training={"loss": "bce", "learning_rate": 0.05},
    )
    (configured, configured_block), (alternative, block) = seen.values()
    assert (configured["loss"], configured["learning_rate"]) == ("bce", 0.05)
    assert (alternative["loss"], alternative["learning_rate"]) == ("softmax", 0.02)
    assert block == SELECTION_BLOCK | {"item_bias": True}
    assert "training" not in configured_block


def test_batches_are_sized_for_the_device_with_the_linear_rate_rule():
    from twotower_pipeline.training.selection import sized_for_device

    block = {"batch_size": 2048, "learning_rate": 0.007, "cuda_batch_multiple": 8, "device": "auto"}
    on_cpu = sized_for_device(block, torch.device("cpu"))
    assert on_cpu == {"batch_size": 2048, "learning_rate": 0.007, "device": "auto"}
    on_cuda = sized_for_device(block, torch.device("cuda"))
    assert on_cuda["batch_size"] == 16384 and on_cuda["learning_rate"] == pytest.approx(0.056)
    assert "cuda_batch_multiple" not in on_cuda
    assert sized_for_device({**block, "cuda_batch_multiple": 1}, torch.device("cuda")) == on_cpu
    assert block["batch_size"] == 2048  # the caller's block is left as it was
