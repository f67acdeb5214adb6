"""autoseg.progress: what a trial writes as it trains, and the line the search shows."""

from __future__ import annotations

import io
import json
import types
from pathlib import Path

import pytest

from autoseg.progress import EpochProgress, Relay


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def _train(callback: EpochProgress, clock: Clock, epochs: int, steps: int, epoch_seconds,
           losses, vals, relay: Relay | None = None, stop_at: int | None = None):
    """Runs the callback through `epochs` epochs of `steps` batches on the fake clock."""
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
    for epoch in range(epochs):
        callback.on_epoch_begin(epoch)
        for step in range(steps):
            clock.now += epoch_seconds[epoch] / steps
            callback.on_train_batch_end(step, {"loss": losses[epoch]})
        if stop_at is not None and epoch == stop_at:
            callback.model.stop_training = True
        callback.on_epoch_end(epoch, {"loss": losses[epoch], "val_mean_iou": vals[epoch]})
        if relay is not None:
            relay.poll()
        if callback.model.stop_training:
            break


def test_the_callback_writes_an_epoch_line_and_throttled_batch_lines(tmp_path):
    clock = Clock()
    path = tmp_path / "progress.jsonl"
    _train(EpochProgress(path, batch_every=2.0, clock=clock), clock, epochs=2, steps=10,
           epoch_seconds=[10.0, 10.0], losses=[0.9, 0.5], vals=[0.3, 0.4])
    events = [json.loads(line) for line in path.read_text().splitlines()]
    epochs = [e for e in events if e["kind"] == "epoch"]
    batches = [e for e in events if e["kind"] == "batch"]
    assert [(e["epoch"], e["epochs"], e["loss"], e["val"]) for e in epochs] == [
        (0, 2, 0.9, 0.3), (1, 2, 0.5, 0.4)]
    assert [e["seconds"] for e in epochs] == pytest.approx([10.0, 10.0])
    # A batch takes 1 s: one line every 2 s, not one per batch.
    assert 8 <= len(batches) <= 11
    assert all(b["steps"] == 10 and 1 <= b["step"] <= 10 for b in batches)


def plain_lines(tmp_path, label: str, deadline_in: float | None = None,
                search_left: float | None = None, **training) -> tuple[list[str], Path]:
    """The lines a plain (not a terminal) relay logs for a training on the fake clock, and
    the progress file."""
    clock = Clock()
    path = tmp_path / "progress.jsonl"
    lines = []
    deadline = clock.now + deadline_in if deadline_in is not None else None
    relay = Relay(path, label, lines.append, deadline=deadline, search_left=search_left,
                  clock=clock)
    _train(EpochProgress(path, clock=clock), clock, relay=relay, **training)
    return lines, path


def test_plain_lines_one_per_epoch_with_loss_val_speed_and_etas(tmp_path):
    lines, _ = plain_lines(
        tmp_path, "[trial 3]", deadline_in=3600, epochs=10, steps=4,
        epoch_seconds=[90.0] + [60.0] * 9, losses=[0.9, 0.7, 0.6, 0.5] + [0.4] * 6,
        vals=[0.2, 0.45, 0.4, 0.5] + [0.5] * 6)
    assert len(lines) == 10
    assert lines[0] == ("[trial 3]  epoch 1/10  loss 0.900  val mIoU 0.200 (best 0.200)  "
                        "90 s/epoch  trial ends in ~14 min  search in ~58 min")
    # From epoch 2 on the first (traced) epoch is left out of the speed.
    assert lines[2] == ("[trial 3]  epoch 3/10  loss 0.600  val mIoU 0.400 (best 0.450)  "
                        "60 s/epoch  trial ends in ~7 min  search in ~56 min")
    assert lines[-1].endswith("trial ends in ~0 s  search in ~50 min")  # 2970 s


def test_the_trial_eta_stops_at_the_deadline_and_when_training_stops(tmp_path):
    lines, _ = plain_lines(tmp_path, "[trial 1]", deadline_in=300, epochs=50, steps=2,
                           epoch_seconds=[60.0] * 50, losses=[0.5] * 50, vals=[0.5] * 50,
                           stop_at=2)
    assert "trial ends in ~4 min  search in ~4 min" in lines[0]  # 49 epochs left, 240 s to go
    assert lines[2].endswith("trial ends in ~0 s  search in ~2 min")  # told to stop


def test_without_a_deadline_the_search_eta_adds_the_trials_after_this_one(tmp_path):
    lines, path = plain_lines(tmp_path, "[trial 2]", search_left=600.0, epochs=3, steps=1,
                              epoch_seconds=[30.0] * 3, losses=[0.5] * 3, vals=[0.5] * 3)
    assert lines[0].endswith("trial ends in ~60 s  search in ~11 min")
    unknown = Relay(path, "[trial 2]", lambda line: None, clock=Clock())
    unknown.poll()
    assert "search in" not in unknown.line()


def test_a_half_written_line_waits_for_its_end(tmp_path):
    path = tmp_path / "progress.jsonl"
    lines = []
    relay = Relay(path, "[trial 1]", lines.append)
    event = json.dumps({"kind": "epoch", "epoch": 0, "epochs": 2, "t": 1.0, "seconds": 5.0,
                        "loss": 0.5, "val": 0.25, "stopping": False})
    path.write_text(event[:20])
    relay.poll()
    assert lines == []
    path.write_text(event + "\n")
    relay.poll()
    assert len(lines) == 1 and "epoch 1/2  loss 0.500  val mIoU 0.250" in lines[0]
    relay.poll()
    assert len(lines) == 1  # nothing new, no line


def test_on_a_terminal_one_line_is_updated_in_place_and_cleared_at_the_end(tmp_path):
    clock = Clock()
    path = tmp_path / "progress.jsonl"
    stream = io.StringIO()
    lines = []
    relay = Relay(path, "[trial 1]", lines.append, tty=True, stream=stream, clock=clock)
    callback = EpochProgress(path, batch_every=0.0, clock=clock)
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.set_params({"epochs": 2, "steps": 4})
    callback.on_epoch_begin(0)
    clock.now += 5
    callback.on_train_batch_end(1, {"loss": 0.8})
    relay.poll()
    assert stream.getvalue() == "\r\033[K[trial 1]  epoch 1/2 step 2/4"
    relay.close()
    assert stream.getvalue().endswith("\r\033[K")
    assert lines == []  # nothing through the log on a terminal


def test_a_trial_in_the_search_process_shows_its_lines_through_the_fit_callbacks(tmp_path):
    """`LiveRelay` after `EpochProgress`, as `attach` and the tuner set them up for a trial
    trained in the search's own process: a line per epoch as the epoch ends, and one relay
    for every execution's deep copy of the callbacks."""
    import copy

    from autoseg.progress import LiveRelay, attach

    clock = Clock()
    lines = []
    tuner = types.SimpleNamespace(log=lines.append, deadline=clock.now + 600)
    callbacks = []
    relay = attach(tuner, types.SimpleNamespace(trial_id="4"), tmp_path / "trial_4", callbacks)
    (tmp_path / "trial_4" / "progress.jsonl").write_text("left by a killed search\n")
    relay = attach(tuner, types.SimpleNamespace(trial_id="4"), tmp_path / "trial_4", [])
    assert not (tmp_path / "trial_4" / "progress.jsonl").exists()  # a rerun starts afresh
    relay.clock = clock
    live = LiveRelay(relay, clock=clock)
    assert copy.deepcopy(live) is live
    writer = EpochProgress(tmp_path / "trial_4" / "progress.jsonl", clock=clock)
    writer.set_model(types.SimpleNamespace(stop_training=False))
    writer.set_params({"epochs": 3, "steps": 2, "verbose": 0})
    for epoch in range(3):
        for callback in (writer, live):
            callback.on_epoch_begin(epoch)
        for step in range(2):
            clock.now += 10
            for callback in (writer, live):
                callback.on_train_batch_end(step, {"loss": 0.5})
        for callback in (writer, live):
            callback.on_epoch_end(epoch, {"loss": 0.5, "val_mean_iou": 0.1 * (epoch + 1)})
        assert len(lines) == epoch + 1  # shown as the epoch ends, not after the trial
    live.on_train_end()
    assert lines[0].startswith("[trial 4]  epoch 1/3  loss 0.500  val mIoU 0.100 (best 0.100)")
    assert lines[-1] == ("[trial 4]  epoch 3/3  loss 0.500  val mIoU 0.300 (best 0.300)  "
                         "20 s/epoch  trial ends in ~0 s  search in ~9 min")


@pytest.mark.slow  # ~20 s: a real search
def test_an_in_process_search_logs_a_progress_line_per_epoch(tiny_dataset, tmp_path, monkeypatch):
    from autoseg import search

    monkeypatch.setenv("AUTOSEG_TRIAL_PROCESS", "0")
    lines = []
    search.search(tiny_dataset, space="ci", out=tmp_path / "run", tuner="random", max_trials=1,
                  max_epochs=2, log=lines.append)
    shown = [line for line in lines if line.startswith("[trial 0]  epoch")]
    assert [line.split()[3] for line in shown] == ["1/2", "2/2"], lines
    assert all(" val mIoU " in line and " s/epoch " in line for line in shown), shown
