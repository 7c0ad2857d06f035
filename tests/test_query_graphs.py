"""Batch-1 query graphs: caption buckets, padding that leaves scores as they were, replay through
recorded buffers (a recorder that reruns each pass stands in for CUDA graphs on a CPU), the
fallbacks, the CPU gate and recording failures."""
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import cir_core
from cir_core import query_graphs
from cir_core.query_graphs import QueryGraphs, bucket_for, caption_buckets, graphed_queries, pad_text

CAPTIONS = ["red", "make the red circle large", "remove the small blue square and move the green triangle to the "
            "left of the big yellow circle near the top"]


class RerunRecorder:
    """Stands in for CUDA graph recording: a 'replay' runs the pass again on the recorded input
    buffers and writes into the recorded output, as a graph replay does."""

    def __init__(self):
        self.recorded = 0

    def record(self, function, inputs):
        self.recorded += 1
        output = function(*inputs)

        def replay():
            output.copy_(function(*inputs))

        return replay, output


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    built = cir_core.create_model("tiny-test").eval()
    with torch.no_grad():  # image-dependent vectors, so that a mixed-up input shows in the answer
        for name, parameter in built.named_parameters():
            if parameter.dim() >= 2 and ("vision_model" in name or "crossattention" in name):
                parameter.normal_(0.0, 0.3)
    return built


@pytest.fixture(scope="module")
def graphs(model):
    return QueryGraphs(model, recorder=RerunRecorder())


def pixels(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def direct_query(model, image: torch.Tensor, caption: str) -> torch.Tensor:
    with torch.inference_mode():
        text = model.tokenize(caption)
        return model.compose(model.query_prompt(model.vision_features(image), text), text)


def graphed_query(graphs, image: torch.Tensor, caption: str) -> torch.Tensor:
    with torch.inference_mode():
        text = graphs.model.tokenize(caption)
        return graphs.compose(graphs.query_prompt(graphs.vision_features(image), text), text)


def test_buckets_double_from_eight_up_to_the_caption_limit():
    assert caption_buckets(32) == (8, 16, 32)
    assert caption_buckets(16) == (8, 16)
    assert caption_buckets(40) == (8, 16, 32, 40)
    assert caption_buckets(5) == (5,)
    assert [bucket_for(n, (8, 16, 32)) for n in (1, 8, 9, 16, 17, 32, 33)] == [8, 8, 16, 16, 32, 32, None]


def test_padding_goes_after_the_caption_and_is_masked_out(model):
    text = model.tokenize("make it red")
    padded = pad_text(text, 16, model.tokenizer.pad_token_id)
    length = text.input_ids.shape[1]
    assert padded.input_ids.shape == (1, 16) and torch.equal(padded.input_ids[:, :length], text.input_ids)
    assert (padded.input_ids[:, length:] == model.tokenizer.pad_token_id).all()
    assert padded.attention_mask.tolist() == [[1] * length + [0] * (16 - length)]
    with pytest.raises(ValueError, match="do not fit"):
        pad_text(padded, 8, 0)


@pytest.mark.parametrize("grad", [False, True], ids=["inference (fused attention)", "with gradients (eager)"])
def test_padding_to_a_bucket_leaves_queries_and_rankings_as_they_were(model, grad):
    gallery = model.encode_target(pixels(7, batch=12))  # (12, Q, D)
    for caption in CAPTIONS:
        text = model.tokenize(caption)
        padded = pad_text(text, model.config.preprocess.max_caption_tokens, model.tokenizer.pad_token_id)
        with torch.set_grad_enabled(grad):
            features = model.vision_features(pixels(1))
            exact = model.compose(model.query_prompt(features, text), text).detach()
            bucketed = model.compose(model.query_prompt(features, padded), padded).detach()
        assert torch.allclose(bucketed, exact, atol=1e-5)
        with torch.inference_mode():
            exact_scores, bucketed_scores = model.score(exact, gallery)[0], model.score(bucketed, gallery)[0]
        assert torch.allclose(bucketed_scores, exact_scores, atol=1e-5)
        assert torch.equal(bucketed_scores.argsort(descending=True), exact_scores.argsort(descending=True))


def test_one_graph_for_the_vision_encoder_and_two_per_bucket(model, graphs):
    assert graphs.buckets == (8, 16)
    assert graphs.count == 1 + 2 * len(graphs.buckets) == 5
    assert graphs.recording_s >= 0
    assert graphs.query_tokens is model.query_tokens


def test_replays_answer_each_query_as_the_model_does(model, graphs):
    # Several references and caption lengths in turn: each replay reads what was copied in last.
    for seed, caption in [(1, CAPTIONS[0]), (2, CAPTIONS[1]), (3, CAPTIONS[2]), (1, CAPTIONS[1])]:
        expected = direct_query(model, pixels(seed), caption)
        assert torch.allclose(graphed_query(graphs, pixels(seed), caption), expected, atol=1e-5)


def test_answers_are_copies_that_a_later_replay_does_not_overwrite(graphs):
    first = graphed_query(graphs, pixels(1), CAPTIONS[0])
    kept = first.clone()
    graphed_query(graphs, pixels(2), CAPTIONS[0])
    assert torch.equal(first, kept)


def test_concurrent_queries_each_get_their_own_answer(model, graphs):
    work = [(seed, CAPTIONS[seed % len(CAPTIONS)]) for seed in range(12)]
    expected = [direct_query(model, pixels(seed), caption) for seed, caption in work]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda job: graphed_query(graphs, pixels(job[0]), job[1]), work))
    for answer, reference in zip(answers, expected):
        assert torch.allclose(answer, reference, atol=1e-5)


def test_batches_and_attention_maps_run_the_model_itself(model, graphs, monkeypatch):
    monkeypatch.setattr(query_graphs._ReplayedPass, "__call__", lambda *args: pytest.fail("replayed"))
    with torch.inference_mode():
        features = graphs.vision_features(pixels(1, batch=2))
        assert torch.allclose(features, model.vision_features(pixels(1, batch=2)))
        text = model.tokenize(CAPTIONS[:2])
        prompt = graphs.query_prompt(features, text)
        assert torch.allclose(graphs.compose(prompt, text), model.compose(model.query_prompt(features, text), text))
        single = model.vision_features(pixels(1))
        prompt, attentions = graphs.query_prompt(single, model.tokenize("red"), output_attentions=True)
        assert len(attentions) == len(model.query_prompt(single, model.tokenize("red"), output_attentions=True)[1])


def test_on_a_cpu_nothing_is_recorded(model, monkeypatch):
    monkeypatch.setattr(query_graphs, "CudaGraphRecorder", lambda device: pytest.fail("recorded on a CPU"))
    assert graphed_queries(model) is model


def test_a_failed_recording_leaves_the_model_answering_as_it_is(model, monkeypatch, caplog):
    class FailingRecorder:
        def __init__(self, device):
            pass

        def record(self, function, inputs):
            raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(query_graphs, "records_graphs", lambda model: True)
    monkeypatch.setattr(query_graphs, "CudaGraphRecorder", FailingRecorder)
    with caplog.at_level(logging.WARNING, logger="cir_core.query_graphs"):
        assert graphed_queries(model) is model
    assert "recording them failed (operation not permitted when stream is capturing)" in caplog.text


def test_where_graphs_apply_they_are_recorded_once(model, monkeypatch):
    recorders = []
    monkeypatch.setattr(query_graphs, "records_graphs", lambda model: True)
    monkeypatch.setattr(query_graphs, "CudaGraphRecorder", lambda device: recorders.append(RerunRecorder())
                        or recorders[-1])
    graphed = graphed_queries(model)
    assert isinstance(graphed, QueryGraphs) and len(recorders) == 1 and recorders[0].recorded == graphed.count


def test_an_engine_answers_through_recorded_passes_as_it_does_without_them(tmp_path, monkeypatch):
    from tiny_gallery import tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes

    checkpoint = write_image_sensitive_checkpoint(tmp_path / "model")
    shapes = write_tiny_shapes(tmp_path / "shapes")
    plain = tiny_engine(checkpoint, shapes, tmp_path / "cache")
    assert plain._query_passes is plain._query_model  # a CPU: nothing recorded
    monkeypatch.setattr(query_graphs, "records_graphs", lambda model: True)
    monkeypatch.setattr(query_graphs, "CudaGraphRecorder", lambda device: RerunRecorder())
    graphed = tiny_engine(checkpoint, shapes, tmp_path / "cache")
    assert isinstance(graphed._query_passes, QueryGraphs)
    upload = plain.gallery_path(plain.gallery_ids[3])
    for reference in (plain.gallery_ids[0], upload):
        for caption in CAPTIONS:
            expected, answered = plain.search(reference, caption, k=5), graphed.search(reference, caption, k=5)
            assert [hit.id for hit in answered.hits] == [hit.id for hit in expected.hits]
            assert torch.allclose(torch.as_tensor(answered.query_vector), torch.as_tensor(expected.query_vector),
                                  atol=1e-5)
    explained = graphed.search(plain.gallery_ids[0], CAPTIONS[1], k=5, explain=True)
    assert explained.explanation is not None and explained.explanation.attention.per_token.size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_recorded_graphs_answer_as_the_plain_passes(model):
    import copy

    from cir_core.device import place_model

    placed = place_model(copy.deepcopy(model), "cuda")  # fp16 weights under autocast, as an engine on a GPU
    graphed = graphed_queries(placed)
    assert isinstance(graphed, QueryGraphs) and graphed.count == 1 + 2 * len(graphed.buckets)
    for seed, caption in [(1, CAPTIONS[0]), (2, CAPTIONS[2]), (3, CAPTIONS[1]), (1, CAPTIONS[0])]:
        image = pixels(seed).cuda()
        assert torch.allclose(graphed_query(graphed, image, caption), direct_query(placed, image, caption), atol=5e-3)
