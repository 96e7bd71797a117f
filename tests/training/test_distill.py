"""`shenhe distill`: layer choice, the student built from the teacher, the loss, the teacher-logit cache, and a
tiny teacher distilled into a 1-layer student that exports and predicts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shenhe.models.windowing import Window
from tests.conftest import present

DATA = Path(__file__).parent / "data"

torch = pytest.importorskip("torch")


def _args(source: Path, encoder: Path, out: Path, **kw):
    from shenhe.training.finetune.args import DistillArguments

    base: dict[str, Any] = dict(base=str(encoder), data=DATA, out=out, teacher=str(source), layers=1, epochs=2, max_steps=8,
                batch_size=8, eval_batch_size=16, learning_rate=1e-3, head_learning_rate=1e-3, max_length=48,
                window_stride=8, eval_every_steps=4, eval_samples=None, save_every_steps=2, threads=1, device="cpu",
                early_stopping_patience=100)
    base.update(kw)
    return DistillArguments(**base)


# -- which layers -----------------------------------------------------------------------------------------

def test_spread_keeps_every_n_over_k_th_layer_ending_at_the_top() -> None:
    from shenhe.training.finetune.distill import choose_layers

    assert choose_layers(12, 6) == [1, 3, 5, 7, 9, 11]  # every other layer
    assert choose_layers(12, 4) == [2, 5, 8, 11]
    assert choose_layers(12, 3) == [3, 7, 11]
    assert choose_layers(12, 1) == [11]
    assert choose_layers(12, 12) == list(range(12))
    assert choose_layers(2, 1) == [1]
    assert choose_layers(12, 4, "bottom") == [0, 1, 2, 3]
    assert choose_layers(12, 0, "0,4,8,11") == [0, 4, 8, 11]
    for n, k in ((12, 13), (12, 0)):
        with pytest.raises(ValueError, match="layers"):
            choose_layers(n, k)
    with pytest.raises(ValueError, match="0-11"):
        choose_layers(12, 0, "0,12")
    for bad in ("4,2", "1,1", "a,b", "", "-1,3"):
        with pytest.raises(ValueError, match="layer-map"):
            choose_layers(12, 0, bad)


def test_arguments_are_checked(tmp_path: Path) -> None:
    assert _args(tmp_path, tmp_path, tmp_path / "o", layers=0, layer_map="0,2,5").layers == 3
    for kw, match in (({"alpha": 1.5}, "alpha"), ({"temperature": 0.0}, "temperature"), ({"layers": 0}, "layers"),
                      ({"layers": 2, "layer_map": "0,5,9"}, "lists 3"), ({"teacher": ""}, "teacher"),
                      ({"augment_copies": -1}, "augment_copies")):
        with pytest.raises(ValueError, match=match):
            _args(tmp_path, tmp_path, tmp_path / "o", **kw)


def test_the_student_is_the_teachers_chosen_layers_and_round_trips(tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.model import keep_layers, load_model, save_model

    teacher, tokenizer, meta = load_model(tiny_run / "model")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ids = torch.tensor([[0, 5, 6, 7, 8, 2, 1], [0, 9, 10, 2, 1, 1, 1]])
    mask = (ids != 1).long()
    keep_layers(teacher, [1])
    student = teacher
    after = student.state_dict()
    assert student.encoder.config.num_hidden_layers == 1
    assert not any(".layer.1." in k for k in after)
    for k, v in after.items():  # layer 0 of the student is layer 1 of the teacher; the rest is the teacher's
        assert torch.equal(v, before[k.replace(".layer.0.", ".layer.1.")]), k
    with torch.no_grad():
        want = student.eval()(ids, mask)
    save_model(student, tokenizer, tmp_path / "model", extra={"text_prefix": meta.get("text_prefix", "")})
    loaded, _, _ = load_model(tmp_path / "model")
    assert loaded.encoder.config.num_hidden_layers == 1
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask), want, atol=1e-6)


# -- the loss ---------------------------------------------------------------------------------------------

def _loss(logits, teacher, gold, gw, alpha=0.7, t=2.0, mask=None, pos=None):
    from shenhe.training.finetune.distill import distill_loss

    mask = torch.ones(logits.shape[1]) if mask is None else mask
    pos = torch.ones(logits.shape[1]) if pos is None else pos
    return distill_loss(logits, teacher, gold, gw, mask, pos, alpha, t)


def test_the_loss_mixes_the_teachers_scores_and_the_gold_labels() -> None:
    g = torch.Generator().manual_seed(0)
    b, c = 6, 9
    teacher = torch.randn(b, c, generator=g) * 3
    student = torch.randn(b, c, generator=g) * 3
    gold = (torch.rand(b, c, generator=g) > 0.7).float()
    gw = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # three windows with gold labels, three without
    mask = torch.tensor([1.0] * 7 + [0.0, 0.0])
    pos = torch.linspace(1, 5, c)

    # The teacher term is a KL divergence: 0 when the student reproduces the teacher, positive otherwise.
    assert abs(float(_loss(teacher.clone(), teacher, gold, torch.zeros(b)))) < 1e-5
    assert float(_loss(student, teacher, gold, torch.zeros(b))) > 0.01
    # alpha = 0 on windows with gold labels: the masked, positive-weighted BCE `shenhe train` uses.
    bce = torch.nn.functional.binary_cross_entropy_with_logits(student[:3], gold[:3], pos_weight=pos, reduction="none")
    want = (bce * mask).sum() / (mask.sum() * 3)
    assert torch.allclose(_loss(student[:3], teacher[:3], gold[:3], gw[:3], alpha=0.0, mask=mask, pos=pos), want)
    # Windows without gold labels learn from the teacher alone, whatever alpha is.
    assert torch.allclose(_loss(student[3:], teacher[3:], gold[3:], gw[3:], alpha=0.0),
                          _loss(student[3:], teacher[3:], gold[3:], gw[3:], alpha=1.0))
    # Masked (untrained) categories do not count.
    moved = student.clone()
    moved[:, 7:] += 5.0
    assert torch.allclose(_loss(student, teacher, gold, gw, mask=mask), _loss(moved, teacher, gold, gw, mask=mask))
    # Sample weights (reviewer rows weigh more) scale each window's loss.
    from shenhe.training.finetune.distill import distill_loss

    plain = distill_loss(student, teacher, gold, gw, mask, pos, 0.7, 2.0)
    assert torch.allclose(distill_loss(student, teacher, gold, gw, mask, pos, 0.7, 2.0, torch.ones(b)), plain)
    assert torch.allclose(distill_loss(student, teacher, gold, gw, mask, pos, 0.7, 2.0, torch.full((b,), 2.0)), 2 * plain)
    # The teacher term's gradient: T * (sigmoid(student / T) - sigmoid(teacher / T)) per window and category
    # (T² keeps its size comparable across temperatures).
    z = student.clone().requires_grad_(True)
    _loss(z, teacher, gold, torch.zeros(b), t=3.0).backward()
    want_grad = 3.0 * (torch.sigmoid(student / 3.0) - torch.sigmoid(teacher / 3.0)) / (c * b)
    assert z.grad is not None and torch.allclose(z.grad, want_grad, atol=1e-6)


# -- the cache --------------------------------------------------------------------------------------------

def _windows(n: int) -> list[Window]:
    return [Window(i // 2, (0, 5 + i % 7, 6, 2), 0, 1) for i in range(n)]


class _Teacher:
    """A fake model: logits from the ids; counts the windows it scores and can fail after some calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.scored = 0
        self.calls = 0
        self.fail_after = fail_after

    def factory(self):
        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise KeyboardInterrupt
            self.scored += len(ids)
            return np.repeat((ids * mask).sum(axis=1, keepdims=True).astype(np.float32), 9, axis=1)
        return run


def test_teacher_logits_are_computed_once_continued_after_a_stop_and_recomputed_for_another_teacher(tmp_path: Path) -> None:
    from shenhe.training.finetune.teacher import cached_teacher_logits

    windows = _windows(10)
    want = np.repeat(np.array([[sum(w.ids)] for w in windows], dtype=np.float32), 9, axis=1)
    key = {"teacher_model_sha256": "a" * 64, "data": {"train.jsonl": "d" * 64}}

    # Stopped after the first chunk of 4 windows: that chunk stays on disk...
    stopped = _Teacher(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        cached_teacher_logits(tmp_path, "train", windows, key, stopped.factory, 1, batch_size=4, chunk=4)
    assert stopped.scored == 4 and len(list((tmp_path / "train.parts").glob("*.npy"))) == 1
    # ... and the next run scores only the rest.
    rest = _Teacher()
    got, report = cached_teacher_logits(tmp_path, "train", windows, key, rest.factory, 1, batch_size=4, chunk=4)
    assert rest.scored == 6 and report.computed_windows == 6 and not report.reused
    assert np.array_equal(got, want) and not (tmp_path / "train.parts").exists()

    # A second run reads the cache: the teacher is not even loaded.
    def no_teacher():
        raise AssertionError("the teacher should not run")

    again, report = cached_teacher_logits(tmp_path, "train", windows, key, no_teacher, 1, chunk=4)
    assert report.reused and report.computed_windows == 0 and np.array_equal(again, want)

    # Another teacher, other data or other windows: computed again, the old cache replaced.
    for changed_key, changed_windows in (({**key, "teacher_model_sha256": "b" * 64}, windows),
                                         ({**key, "data": {"train.jsonl": "e" * 64}}, windows),
                                         (key, windows[:-1])):
        fresh = _Teacher()
        out, report = cached_teacher_logits(tmp_path, "train", changed_windows, changed_key, fresh.factory, 1, chunk=4)
        assert not report.reused and fresh.scored == len(changed_windows) and len(out) == len(changed_windows)
    meta = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    assert meta["complete"] and meta["key_parts"]["windows"] == 9


# -- end to end -------------------------------------------------------------------------------------------

def test_a_tiny_teacher_distils_into_a_one_layer_student_that_exports_and_predicts(
        tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from shenhe.models.predictor import Predictor
    from shenhe.training.finetune.distill import distill
    from shenhe.training.finetune.export import ExportOptions, export_bundle

    t0 = time.perf_counter()
    args = _args(tiny_bundle, tiny_run.parent / "encoder", tmp_path / "student")
    info = distill(args, show_progress=False)
    assert info["kind"] == "distill" and info["status"] == "done" and info["state"]["global_step"] == 8
    d = info["summary"]["distillation"]
    manifest = json.loads((tiny_bundle / "bundle.json").read_text(encoding="utf-8"))
    assert (d["teacher"]["name"], d["teacher"]["version"]) == ("tiny", "0.0.1")
    assert d["teacher"]["model_sha256"] == manifest["files"]["model.onnx"] and d["teacher"]["bundle_sha256"]
    assert (d["layers"], d["teacher_layers"], d["kept_layers"]) == (1, 2, [1])
    assert d["items"]["train"]["texts"] == 49 and d["items"]["train"]["gold_windows"] == 49
    assert d["teacher_logits"]["train"]["computed_windows"] == d["items"]["train"]["windows"]
    assert info["summary"]["trained_categories"] == list(manifest["trained_categories"])
    config = json.loads((args.out / "model" / "encoder" / "config.json").read_text(encoding="utf-8"))
    assert config["num_hidden_layers"] == 1
    assert (args.out / "teacher" / "train.npy").is_file()

    bundle = export_bundle(ExportOptions(run=args.out, out=tmp_path / "bundle", name="tiny-student", version="0.0.2",
                                         threads=1, show_progress=False, allow_parity_failure=True,
                                         quantization="dynamic"))
    metrics = json.loads((bundle / "metrics.json").read_text(encoding="utf-8"))
    distilled = metrics["training"]["distillation"]
    assert distilled["teacher"]["model_sha256"] == d["teacher"]["model_sha256"]
    assert distilled["teacher_speed"]["texts_per_second_batch32"] > 0  # both timed by the same export
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "**A distilled student** of `tiny 0.0.1`: 1 of" in card and "## Distillation" in card
    assert d["teacher"]["model_sha256"] in card and "both models timed by this export" in card
    assert "- knowledge-distillation" in card and "| alpha | 0.7 |" in card  # front matter, hyperparameters
    assert "distilled" not in (tiny_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")  # an ordinary run's card
    from shenhe.training.finetune.model_card import write_bundle_card

    assert not write_bundle_card(bundle, check=True)  # `shenhe card` renders the same card from the bundle's files
    predictions = Predictor(bundle, intra_op_threads=1).predict(["你这个傻逼，滚出去", "今天天气很好"])
    assert len(predictions) == 2 and predictions[0].model.name == "tiny-student"
    assert time.perf_counter() - t0 < 60

    # A student run or bundle is a starting point like any other (`--init-from`, re-exporting a bundle): the
    # base encoder's model keeps as many layers as the student has.
    from shenhe.models.windowing import WindowTokenizer
    from shenhe.training.finetune.model import MultiLabelClassifier, encoder_layers, load_base, load_model
    from shenhe.training.finetune.warm_start import init_from

    trained, _, _ = load_model(args.out / "model")
    for source in (args.out, bundle):
        encoder, tokenizer, prefix = load_base(str(tiny_run.parent / "encoder"))
        model = MultiLabelClassifier(encoder)
        assert len(present(encoder_layers(model.encoder))) == 2
        windower = WindowTokenizer(tokenizer.backend_tokenizer, 48, 8, pad_token_id=1, text_prefix=prefix)
        report = init_from(model, tokenizer, source, windower.first_windows(["你这个傻逼，滚出去", "今天天气很好"]))
        assert len(present(encoder_layers(model.encoder))) == 1 and model.encoder.config.num_hidden_layers == 1
        if source == args.out:
            assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
        else:
            assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 0.2


def test_an_interrupted_distillation_resumes_from_the_cache_to_the_same_weights(
        tiny_run: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shenhe.training.finetune.distill import DistillTrainer, distill
    from shenhe.training.finetune.errors import TrainError
    from shenhe.training.finetune.trainer import Trainer, load_run_args

    encoder = tiny_run.parent / "encoder"
    straight = _args(tiny_bundle, encoder, tmp_path / "straight")
    distill(straight, show_progress=False)

    broken = _args(tiny_bundle, encoder, tmp_path / "broken")
    real_step = Trainer._step

    def crash_at_step_6(self, batch):
        if self.state.global_step == 5:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(DistillTrainer, "_step", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        distill(broken, show_progress=False)
    monkeypatch.undo()
    # `shenhe train --resume` refuses a student; the distill resume reads the teacher's logits from the cache.
    with pytest.raises(TrainError, match="shenhe distill --resume"):
        load_run_args(broken.out)
    from shenhe.training.finetune.args import DistillArguments

    info = distill(load_run_args(broken.out, DistillArguments, kind="distill"), resume=True, show_progress=False)
    assert info["summary"]["distillation"]["teacher_logits"]["train"]["reused"]

    a = torch.load(straight.out / "checkpoint.pt", weights_only=True)
    b = torch.load(broken.out / "checkpoint.pt", weights_only=True)
    assert a["state"]["global_step"] == b["state"]["global_step"] == 8
    for k, v in a["trainable"].items():
        assert torch.allclose(v, b["trainable"][k], atol=1e-6), k

    # A teacher that changed since the run started is refused on resume.
    run_file = broken.out / "run.json"
    info = json.loads(run_file.read_text(encoding="utf-8"))
    info["summary"]["distillation"]["teacher"]["model_sha256"] = "0" * 64
    run_file.write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(TrainError, match="changed since this run started"):
        distill(load_run_args(broken.out, DistillArguments, kind="distill"), resume=True, show_progress=False)


def test_cli_distils_a_run_with_unlabelled_and_augmented_texts_and_a_shared_cache(
        tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shenhe.cli import app
    from shenhe.training.finetune.dataset import read_split

    dev_text = read_split(DATA / "dev.jsonl").texts[0]
    unlabelled = tmp_path / "more.txt"
    unlabelled.write_text("\n".join(["这是一条没有标签的评论", "另一条没有标签的评论", "这是一条没有标签的评论", dev_text, ""]),
                          encoding="utf-8")
    cache = tmp_path / "cache"
    common = ["--teacher", str(tiny_run), "--data", str(DATA), "--max-steps", "3", "--batch-size", "8",
              "--eval-every-steps", "0", "--eval-samples", "0", "--threads", "1", "--device", "cpu", "--quiet",
              "--teacher-cache", str(cache)]
    res = CliRunner().invoke(app, ["distill", "--out", str(tmp_path / "s1"), "--layers", "1", "--layer-map", "bottom",
                                   "--unlabelled", str(unlabelled), "--augment-copies", "1", *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["layers"] == [0]
    d = json.loads((tmp_path / "s1" / "run.json").read_text(encoding="utf-8"))["summary"]["distillation"]
    assert d["teacher"]["kind"] == "run" and d["teacher"]["name"] == tiny_run.name
    assert d["items"]["unlabelled"] == {"texts": 2, "windows": 2, "gold_windows": 0}
    assert d["unlabelled"]["dropped"] == {"empty": 0, "repeated": 1, "in_train": 0, "in_dev_test_or_holdout": 1}
    assert d["items"]["augmented"]["texts"] == d["augmented"]["rewritten"] > 0
    assert d["items"]["augmented"]["gold_windows"] == d["items"]["augmented"]["texts"]
    assert all(not r["reused"] for r in d["teacher_logits"].values())
    assert list(cache.glob("teacher-*.onnx"))  # the run teacher, exported once for onnxruntime
    args = json.loads((tmp_path / "s1" / "run.json").read_text(encoding="utf-8"))["args"]
    assert (args["max_length"], args["window_stride"], args["base"]) == (48, 8, str(tiny_run.parent / "encoder"))

    # A second student of the same teacher on the same data reads the shared cache.
    res = CliRunner().invoke(app, ["distill", "--out", str(tmp_path / "s2"), "--layer-map", "1", *common])
    assert res.exit_code == 0, res.output
    d2 = json.loads((tmp_path / "s2" / "run.json").read_text(encoding="utf-8"))["summary"]["distillation"]
    assert d2["kept_layers"] == [1] and d2["teacher_logits"]["train"]["reused"]

    res = CliRunner().invoke(app, ["distill", "--out", str(tmp_path / "s3"), "--teacher", str(tiny_run)])
    assert res.exit_code != 0 and "--layers K is needed" in res.output
    res = CliRunner().invoke(app, ["distill", "--out", str(tmp_path / "s4"), "--teacher", str(tmp_path), "--layers", "1"])
    assert res.exit_code != 0 and "not a bundle" in res.output
