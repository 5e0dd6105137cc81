"""Steps replayed as CUDA graphs (looper_utils.cuda_graphs) and 02's use of them (sft_setup.graphs_sft).

On the CPU the recording is a stand-in (``make``) that returns the module it was given, so which calls replay,
which run eagerly and what the trainer computes from them are checked here; the GPU test records real graphs
and trains with them against eager steps."""
from __future__ import annotations

import dataclasses

import _tiny
import pytest
import torch

from looper_utils import config, cuda_graphs, data, modeling, sft, sft_setup

CPU, GPU = torch.device("cpu"), torch.device("cuda")


class Recorder:
    """A stand-in for ``cuda_graphs.record``: keeps what it was given, runs the module eagerly."""

    def __init__(self, fail: Exception | None = None):
        self.samples, self.fail = [], fail

    def __call__(self, module, sample):
        if self.fail is not None:
            raise self.fail
        self.samples.append(sample)
        return module


class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return (x * self.w,)


def test_a_shape_is_recorded_at_its_second_sighting_and_replayed_after():
    rec = Recorder()
    g = cuda_graphs.GraphedModule(Doubler(), make=rec)
    a, b = torch.ones(2, 3), torch.ones(4, 3)
    assert g(a)[0].tolist() == [[2.0] * 3] * 2  # first sighting: eager
    assert (g.replays, g.eager, g.shapes) == (0, 1, [])
    g(a + 1)                                     # second: recorded, then replayed
    assert (g.replays, g.eager, g.shapes) == (1, 1, [((2, 3),)])
    assert torch.equal(rec.samples[0][0], a + 1) and rec.samples[0][0].data_ptr() != a.data_ptr()  # a copy
    out = g(a * 3)
    assert out[0].tolist() == [[6.0] * 3] * 2 and (g.replays, g.eager) == (2, 1)
    g(b), g(b)
    assert g.shapes == [((2, 3),), ((4, 3),)] and len(rec.samples) == 2 and g.failed is None
    g(torch.ones(2, 3, dtype=torch.float64))     # another dtype is another shape
    assert g.eager == 3 and len(g.shapes) == 2


def test_at_most_max_graphs_are_recorded_and_capture_at_one_records_at_once():
    rec = Recorder()
    g = cuda_graphs.GraphedModule(Doubler(), capture_at=1, max_graphs=1, make=rec)
    g(torch.ones(1)), g(torch.ones(2)), g(torch.ones(2)), g(torch.ones(1))
    assert g.shapes == [((1,),)] and (g.replays, g.eager) == (2, 2) and len(rec.samples) == 1
    with pytest.raises(ValueError, match="capture_at=0"):
        cuda_graphs.GraphedModule(Doubler(), capture_at=0)


def test_a_call_with_gradients_in_place_runs_eagerly():
    """Accumulated gradients would be overwritten by the next replay's (the graph's own tensors), so a call
    that finds one runs eagerly, and is not recorded."""
    m = Doubler()
    rec = Recorder()
    g = cuda_graphs.GraphedModule(m, capture_at=1, make=rec)
    g(torch.ones(3))[0].sum().backward()
    assert (g.replays, g.eager) == (1, 0) and m.w.grad.item() == 3.0
    g(torch.ones(3))[0].sum().backward()  # the gradient of the last call is still there: accumulates, eagerly
    assert (g.replays, g.eager) == (1, 1) and m.w.grad.item() == 6.0
    g(torch.ones(5))
    assert g.shapes == [((3,),)]  # nothing recorded while gradients are in place
    m.w.grad = None
    g(torch.ones(3))
    assert (g.replays, g.eager) == (2, 2)


def test_a_failed_recording_warns_once_and_leaves_the_eager_path():
    g = cuda_graphs.GraphedModule(Doubler(), capture_at=1,
                                  make=Recorder(fail=RuntimeError("operation not permitted when stream is capturing")))
    with pytest.warns(RuntimeWarning, match=r"CUDA graphs turned off.*\[\(2,\)\].*not permitted.*"
                                            r"sft.cuda_graphs='off'"):
        assert g(torch.ones(2))[0].tolist() == [2.0, 2.0]
    g(torch.ones(3))  # no second attempt, no second warning (pytest's filters turn warnings into errors)
    assert g.failed.startswith("RuntimeError: operation not permitted") and (g.replays, g.eager) == (0, 2)
    assert g.shapes == []


def test_graphs_sft_records_for_eager_layers_on_a_gpu_only_when_asked():
    demo = config.build("demo", stage="sft")
    on = demo.override(stage="sft", cuda_graphs="on", compile="off")
    assert sft_setup.graphs_sft(demo, GPU) == (False, "sft.cuda_graphs='off'")  # the default
    assert sft_setup.graphs_sft(on, GPU) == (True, "sft.cuda_graphs='on'")
    assert sft_setup.graphs_sft(on, CPU) == (False, "on the CPU: CUDA graphs need a GPU")
    on_compiled, why = sft_setup.graphs_sft(demo.override(stage="sft", cuda_graphs="on"), GPU)
    assert not on_compiled and why.startswith("not with compiled layers") and "sft.compile='off'" in why
    assert not sft_setup.graphs_sft(on.override(stage="sft", packing=True), GPU)[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        assert sft_setup.graphs_sft(on, GPU) == (False, "several processes: each step's gradients are averaged "
                                                        "across them, outside a graph")
    with pytest.raises(ValueError, match="sft.cuda_graphs='auto'"):
        config.build("demo", stage="sft", cuda_graphs="auto")


def test_batches_are_padded_to_a_multiple_of_16_where_graphs_record(tmp_path):
    on = config.build("demo", stage="sft", root=str(tmp_path), cuda_graphs="on", compile="off")
    assert sft_setup.padding_multiple(on, GPU) == cuda_graphs.WIDTH_MULTIPLE == 16
    assert sft_setup.padding_multiple(config.build("demo", stage="sft"), GPU) is None
    assert sft.make_sft_config(on, tmp_path / "w", CPU, progress=False).pad_to_multiple_of is None


@pytest.fixture(scope="module")
def rows():
    return data.synthetic_problems(18, seed=2)


def _train(tmp_path, rows, graphed: bool):
    """6 steps of 02's trainer on the tiny model (its own logits, let onto the CPU), with the forward and
    backward passed through a ``GraphedModule`` whose recording is the stand-in, or not."""
    cfg = _tiny.tiny_cfg(tmp_path, max_steps=6, logging_steps=2, save_steps=100, batch_size=8)
    torch.manual_seed(0)
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    dataset, _ = sft.build_dataset(rows, tok, cfg.model.prompt_style, cfg.sft.max_length)
    args = dataclasses.replace(sft.make_sft_config(cfg, tmp_path / "w", CPU, progress=False), pad_to_multiple_of=256)
    cls = type("OwnLogits", (sft_setup.sft_trainer_class(),), {"full_logits_devices": ("cpu",)})
    trainer = cls(model=model, args=args, train_dataset=dataset, processing_class=tok)
    rec = Recorder()
    if graphed:
        trainer.step_graphs = cuda_graphs.GraphedModule(sft_setup._TokenStats(model), make=rec)
    trainer.train()
    return trainer, [h for h in trainer.state.log_history if "loss" in h], rec


def test_02s_trainer_takes_each_step_through_the_graphs(tmp_path, rows):
    """The trainer's forward and backward go through ``step_graphs`` (the stand-in here): the same loss,
    gradients and metrics as without. 3 steps an epoch, the last of 2 rows: a shape of its own, recorded at its
    second sighting, in the second epoch."""
    graphed, log_g, rec = _train(tmp_path / "g", rows, True)
    _, log_e, _ = _train(tmp_path / "e", rows, False)
    g = graphed.step_graphs
    assert g.shapes == [((8, 256), (8, 256)), ((2, 256), (2, 256))] and (g.replays, g.eager) == (4, 2)
    assert [tuple(t.shape) for t in rec.samples[0]] == [(8, 256), (8, 256)]
    for a, b in zip(log_g, log_e):
        for key in ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a, b)


def test_train_sft_says_why_there_were_no_graphs(tmp_path, rows):
    cfg = _tiny.tiny_cfg(tmp_path, max_steps=2, save_steps=100, cuda_graphs="on")
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    result = sft.train_sft(cfg, model, tok, rows, device=CPU, progress=False)
    assert result.cuda_graphs == "on the CPU: CUDA graphs need a GPU"


@pytest.mark.gpu
def test_recorded_steps_train_as_eager_steps_do_on_a_gpu(tmp_path, rows):
    """Real graphs under bf16 autocast (as accelerate runs 02's model), over eager layers: 8 optimiser steps over
    two widths (each recorded at its second sighting), within bf16 rounding of the same steps run without
    graphs, losses and weights."""
    cfg = _tiny.tiny_cfg(tmp_path)
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=300)
    torch.manual_seed(3)
    batches = []
    for width in (32, 48, 32, 48, 32, 32, 48, 32):
        ids = torch.randint(3, len(tok), (4, width), device=GPU)
        labels = ids.clone()
        labels[:, : width // 3] = -100
        labels[1, width - 7:] = -100
        batches.append((ids, labels))
    results = []
    for graphed in (False, True):
        model = modeling.build_scratch_model(cfg.model, tok, seed=0).to(GPU).train()
        model.forward = torch.autocast("cuda", dtype=torch.bfloat16)(model.forward)  # as accelerate wraps it
        stats = sft_setup._TokenStats(model)
        step = cuda_graphs.GraphedModule(stats) if graphed else stats
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        losses = []
        for ids, labels in batches:
            log_probs, _, _, mask = step(ids, labels)
            loss = -log_probs.sum() / mask.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.zero_grad()
            losses.append(loss.item())
        results.append((losses, [p.detach().float().clone() for p in model.parameters()], step))
    (eager_losses, eager_w, _), (graph_losses, graph_w, g) = results
    assert g.replays == 6 and g.eager == 2 and g.failed is None and len(g.shapes) == 2
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)
    assert graph_losses[-1] < graph_losses[0]
    for a, b in zip(eager_w, graph_w):
        assert torch.allclose(a, b, atol=5e-3, rtol=5e-2)
