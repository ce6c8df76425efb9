"""The experiment tracker: TensorBoard events read back (and purged on resume), wandb offline runs read back
from their .wandb file, the null tracker, and one-sentence errors."""

from __future__ import annotations

import glob
import io
import json
import math
import socket
import struct
import sys
import time

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from optimization.experiment_log import open_log, wandb_run_id  # noqa: E402
from utils.errors import OutputError, UserError  # noqa: E402

CONFIG = {"train": {"optimizer": "sgd", "lr": 0.3}, "seed": 0}


@pytest.fixture
def png(tmp_path):
    """A 20×30 RGBA figure, as the pipeline saves them."""
    fig, ax = plt.subplots(figsize=(3, 2), dpi=10)
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "figure.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def read_events(folder):
    from tensorboard.backend.event_processing import event_accumulator

    everything = {kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    events = event_accumulator.EventAccumulator(str(folder / "tensorboard"), size_guidance=everything)
    events.Reload()
    return events


def scalars(events, tag):
    return [(event.step, event.value) for event in events.Scalars(tag)]


def next_second():
    """Event files are named by the second they were opened in, and read in name order: a resumed run's file
    must come after the first one's, as it does outside a test."""
    time.sleep(1.01 - time.time() % 1)


def test_tensorboard_writes_scalars_text_and_images_and_a_resume_replaces_later_steps(tmp_path, png):
    with open_log("tensorboard", tmp_path, "bs4", "", CONFIG) as log:
        for step in range(1, 6):
            log.scalars(step, {"loss": 10.0 - step, "lr": None}, prefix="train/")
        log.scalars(5, {"loss": 7.5}, prefix="val/")
        log.text("note", "*sharp*")
        log.image("figures/curves", png, step=2)

    events = read_events(tmp_path)
    assert scalars(events, "train/loss") == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 5.0)]
    assert scalars(events, "val/loss") == [(5, 7.5)]
    assert "train/lr" not in events.Tags()["scalars"]
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert config_text == "```json\n" + json.dumps(CONFIG, indent=2) + "\n```"
    assert events.Tensors("note/text_summary")[0].tensor_proto.string_val[0].decode() == "*sharp*"
    [image] = events.Images("figures/curves")
    assert (image.step, image.width, image.height) == (2, 30, 20)
    assert imread(io.BytesIO(image.encoded_image_string)).shape == (20, 30, 3)  # alpha dropped

    next_second()
    with open_log("tensorboard", tmp_path, "bs4", "", CONFIG, resume_step=3) as log:
        for step in range(3, 7):
            log.scalars(step, {"loss": 100.0 + step}, prefix="train/")

    events = read_events(tmp_path)
    assert scalars(events, "train/loss") == [(1, 9.0), (2, 8.0), (3, 103.0), (4, 104.0), (5, 105.0), (6, 106.0)]
    # The purge covers every tag, also those the resumed run has not logged (yet); earlier steps stay.
    assert scalars(events, "val/loss") == []
    assert [image.step for image in events.Images("figures/curves")] == [2]
    assert len(events.Tensors("config/text_summary")) == 1  # logged on the fresh start only


def test_tensorboard_logs_nan_and_infinity_as_they_are(tmp_path):
    with open_log("tensorboard", tmp_path, "run", "", {}) as log:
        log.scalars(1, {"loss": float("nan"), "grad_norm": float("inf")})
    events = read_events(tmp_path)
    assert math.isnan(events.Scalars("loss")[0].value) and events.Scalars("grad_norm")[0].value == math.inf


def test_none_writes_nothing(tmp_path, png):
    with open_log("none", tmp_path, "run", "", CONFIG) as log:
        log.scalars(1, {"loss": 1.0})
        log.text("note", "text")
        log.image("figure", png)
    assert sorted(tmp_path.iterdir()) == [png]


def wandb_records(path):
    """The records of a .wandb file: a 7-byte header, then a LevelDB log (32 KiB blocks of chunks, each a
    7-byte header: checksum, length, type 1 full / 2 first / 3 middle / 4 last) of Record protobufs."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, payload = 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # the block's end is zero padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield Record.FromString(payload)
            payload = b""


def wandb_history(run_folder):
    """{step: {key: value}} of the logged values, and the summary's text values."""
    history, summary = {}, {}
    for record in wandb_records(next(run_folder.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = {key: value for key, value in row.items() if not key.startswith("_")}
        elif record.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
    return history, summary


def test_wandb_writes_an_offline_run_that_a_resume_continues(tmp_path, png, monkeypatch):
    import wandb

    for name in ("WANDB_MODE", "WANDB_SILENT"):  # unset, for the tracker's defaults; set first, so undone after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    server = socket.create_server(("127.0.0.1", 0))  # counts any attempt to reach a server
    server.setblocking(False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    with open_log("wandb", tmp_path, "bs4", "", CONFIG) as log:
        for step in range(1, 4):
            log.scalars(step, {"loss": 10.0 - step, "lr": None}, prefix="train/")
        log.scalars(3, {"grad_norm": float("nan")})
        log.text("note", "*sharp*")
        log.image("figures/curves", png)  # step 0, behind the run: logged at its current step, 3
    # finish() hands the records to the wandb-core process, which writes them when it closes the run a few ms
    # later (the file held only its 7-byte header when read at once): wait for it, as a process's exit does.
    wandb.teardown()
    with pytest.raises(BlockingIOError), server:  # offline: nothing connected, so no retry loop could be reached
        server.accept()

    [run_folder] = (tmp_path / "wandb").glob("offline-run-*")
    assert run_folder.name.endswith("-" + wandb_run_id(tmp_path))
    history, summary = wandb_history(run_folder)
    assert {step: row["train/loss"] for step, row in history.items()} == {1: 9.0, 2: 8.0, 3: 7.0}
    assert math.isnan(history[3]["grad_norm"]) and "train/lr" not in history[3]
    assert history[3]["figures/curves/_type"] == "image-file"
    assert (run_folder / "files" / history[3]["figures/curves/path"]).is_file()
    assert summary["note"] == "*sharp*"

    next_second()  # wandb names a run's folder by the second it started
    with open_log("wandb", tmp_path, "bs4", "", CONFIG, resume_step=3) as log:
        log.scalars(4, {"loss": 6.0}, prefix="train/")
    wandb.teardown()  # no wandb-core left running, nor WANDB_SERVICE set, for the tests after this one
    folders = sorted(glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{wandb_run_id(tmp_path)}")))
    assert len(folders) == 2


def test_a_missing_package_is_one_sentence_with_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"logging.backend wandb needs the wandb package: pip install wandb==0\.31\.0"):
        open_log("wandb", tmp_path, "run", "", {})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"pip install tensorboard==2\.21\.0"):
        open_log("tensorboard", tmp_path, "run", "", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_an_unwritable_folder_is_one_sentence_naming_it(tmp_path, backend):
    (tmp_path / "run").write_text("a file in the way")
    with pytest.raises(OutputError, match=str(tmp_path / "run")):
        open_log(backend, tmp_path / "run" / "seed-0", "run", "", {})
