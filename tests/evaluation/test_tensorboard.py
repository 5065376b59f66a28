"""track.tensorboard: the event files a training writes hold what Aim records, read back with
TensorBoard's own EventAccumulator."""

from __future__ import annotations

from tabula.runtime.events import read_events
from tabula.runtime.tensorboard_log import flat_hparams


def _accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_the_training_metrics_samples_and_hparams_read_back(tiny_run):
    folder = tiny_run.parent / "tb" / tiny_run.name
    events = read_events(tiny_run / "events.jsonl")
    accumulator = _accumulator(folder)
    tags = accumulator.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens", "val/loss", "val/ppl"} <= set(tags["scalars"])
    train = {e["step"]: e for e in events if e["kind"] == "train"}
    loss = {s.step: s.value for s in accumulator.Scalars("train/loss")}
    assert loss.keys() == train.keys()
    assert all(abs(loss[step] - train[step]["loss"]) < 1e-5 for step in loss)
    val = [(s.step, s.value) for s in accumulator.Scalars("val/loss")]
    assert [(e["step"], round(e["val_loss"], 5)) for e in events if e["kind"] == "eval"] == \
        [(step, round(value, 5)) for step, value in val]
    samples = [e for e in events if e["kind"] == "sample"]
    assert "sample/text_summary" in tags["tensors"] and len(accumulator.Tensors("sample/text_summary")) == len(samples) > 0
    text = accumulator.Tensors("sample/text_summary")[0].tensor_proto.string_val[0].decode()
    assert samples[0]["prompt"] in text
    # HParams: the plugin's summary, with the spec's scalars by path and the model's size
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.optimizer.lr"].number_value == 0.002
    assert start.hparams["model.d_model"].number_value == 64
    assert start.hparams["parameters"].number_value == next(e for e in events if e["kind"] == "start")["parameters"]


def test_hparams_are_the_scalars_by_dotted_path():
    assert flat_hparams({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": "x"}], "f": None}) == \
        {"a.b": 1, "a.c": "[1, 2]", "d.0.e": "x"}
