import pytest
import torch

from mlp_experiments import engine
from mlp_experiments.config.compose import compose_config
from mlp_experiments.models import MLP
from mlp_experiments.optim import build_optimizer, build_scheduler, parameter_groups
from mlp_experiments.train import train


def test_weight_decay_applies_to_weight_matrices_only_unless_asked():
    model = MLP(784, 10, hidden_sizes=[16], activation="prelu")
    decayed, kept = parameter_groups(model, 0.01, decay_biases=False)
    assert decayed["weight_decay"] == 0.01 and kept["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"])
    assert {tuple(p.shape) for p in kept["params"]} == {(16,), (10,), (1,)}  # biases, PReLU
    (everything,) = parameter_groups(model, 0.01, decay_biases=True)
    assert everything["weight_decay"] == 0.01
    assert len(everything["params"]) == len(list(model.parameters()))


def test_optimizer_and_scheduler_are_built_from_their_group_configs():
    model = MLP(784, 10, hidden_sizes=[16])
    cfg = compose_config(["optimizer=adam", "scheduler=step", "regularization=weight_decay"])
    optimizer = build_optimizer(cfg.optimizer, cfg.regularization, model)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 0.001
    assert optimizer.param_groups[0]["weight_decay"] == 0.0005
    scheduler = build_scheduler(cfg.scheduler, optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 50
    assert build_scheduler(compose_config().scheduler, optimizer) is None


@pytest.mark.parametrize(
    ("val_losses", "patience", "stop"),
    [([1.0, 0.9, 0.95, 0.97], 2, True), ([1.0, 0.9, 0.95], 2, False),
     ([1.0, 1.1, 1.2], 0, False), ([1.0, 0.8], 1, False)],
)
def test_early_stopping_waits_patience_epochs_after_the_best_val_loss(val_losses, patience, stop):
    history = [{"val_loss": loss} for loss in val_losses]
    assert engine.should_stop_early(history, patience) is stop


def test_same_seed_gives_identical_metrics(synthetic_cfg):
    cfg = synthetic_cfg("trainer.epochs=2", "model.dropout=0.3", tracking=False)
    first, second = train(cfg).history, train(cfg).history
    for a, b in zip(first, second, strict=True):
        assert {k: a[k] for k in a if "time" not in k and "per_s" not in k} == {
            k: b[k] for k in b if "time" not in k and "per_s" not in k
        }
    other = train(synthetic_cfg("trainer.epochs=2", "trainer.seed=1", tracking=False)).history
    assert other[-1]["train_loss"] != first[-1]["train_loss"]


def without_timings(history):
    return [{k: v for k, v in m.items() if k not in ("epoch_time_s", "samples_per_s")}
            for m in history]


def test_a_run_stopped_after_epoch_2_and_resumed_ends_like_an_uninterrupted_one(synthetic_cfg):
    overrides = ("trainer.epochs=4", "model.dropout=0.3", "scheduler=exponential")
    uninterrupted = train(synthetic_cfg(*overrides, tracking=False))

    class Crash(Exception):
        pass

    def crash_after_epoch_2(epoch, metrics):
        if epoch == 2:
            raise Crash

    cfg = synthetic_cfg(*overrides, "trainer.checkpoint_dir=resumed", tracking=False)
    with pytest.raises(Crash):
        train(cfg, hooks=(crash_after_epoch_2,))
    cfg.trainer.resume = True
    resumed = train(cfg)
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)


def test_a_diverging_loss_ends_the_run_with_status_diverged(synthetic_cfg):
    result = train(synthetic_cfg("trainer.epochs=5", "optimizer.lr=1e6", tracking=False))
    assert result.outcome == engine.DIVERGED
    assert len(result.history) < 5


def test_early_stopping_ends_the_run(synthetic_cfg):
    cfg = synthetic_cfg("trainer.epochs=30", "trainer.patience=1", "optimizer.lr=0.5",
                        tracking=False)
    result = train(cfg)
    assert result.outcome == engine.EARLY_STOPPED and len(result.history) < 30


def test_checkpoint_is_written_atomically_and_loads_with_weights_only(tmp_path):
    model = MLP(784, 10, hidden_sizes=[8])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "ck" / "last.pt"
    state = engine.training_state(model, optimizer, None, [{"val_acc": 0.5}], {"run_id": "abc"})
    engine.save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    state = engine.load_checkpoint(path)
    assert state["extra"] == {"run_id": "abc"} and state["history"] == [{"val_acc": 0.5}]
    path.write_bytes(b"garbage")
    with pytest.raises(Exception, match="Cannot resume from"):
        engine.load_checkpoint(path)


def test_bf16_autocast_trains(synthetic_cfg):
    result = train(synthetic_cfg("trainer.epochs=2", "trainer.precision=bf16", tracking=False))
    assert result.outcome == engine.COMPLETED
    assert result.history[-1]["val_acc"] > 0.5  # ten classes: chance is 0.1


def test_torch_compile_gives_the_eager_metrics(synthetic_cfg):
    eager = train(synthetic_cfg(tracking=False)).history[0]
    compiled = train(synthetic_cfg("trainer.compile=true", tracking=False)).history[0]
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert compiled["val_acc"] == pytest.approx(eager["val_acc"], abs=0.01)


def test_progress_shows_a_live_bar_on_a_terminal_and_one_line_per_epoch(caplog):
    from mlp_experiments.progress import Progress

    live = Progress(epochs=3, live=True)
    assert list(live.wrap_batches(iter(range(5)), epoch=1, total=5)) == list(range(5))
    quiet = Progress(epochs=3, live=False)
    batches = iter(range(5))
    assert quiet.wrap_batches(batches, epoch=1, total=5) is batches
    metrics = {"train_loss": 0.5, "train_acc": 0.8, "val_acc": 0.75, "test_acc": 0.7,
               "lr": 0.1, "epoch_time_s": 1.0, "samples_per_s": 1000.0}
    with caplog.at_level("INFO", logger="mlp_experiments"):
        quiet.on_epoch(2, metrics)
    (record,) = caplog.records
    assert "epoch 2/3" in record.message and "val_acc 0.7500" in record.message
