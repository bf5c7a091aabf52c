import pytest
import torch

from clbench.config import TrainConfig
from clbench.data.scenarios import build_stream
from clbench.data.synthetic import build_synthetic
from clbench.learner import Learner
from clbench.models import build_clip


@pytest.fixture
def learner():
    torch.manual_seed(0)
    data = build_synthetic(num_classes=6, train_per_class=4, test_per_class=3, world_domains=["clean"])
    stream = build_stream(data, "class_incremental", 0, "s", steps=2)
    return Learner(build_clip("clbench-tiny-32"), stream, TrainConfig(batch_size=8, lr=1e-4), seed=0)


def test_preprocess_normalises_and_resizes(learner):
    img = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    x = learner.preprocess(img)
    assert x.shape == (2, 3, 32, 32)
    expected = (1 - torch.tensor(learner.clip.mean)) / torch.tensor(learner.clip.std)
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-4)


def test_accuracy_counts_correct_predictions_in_the_given_label_space(learner):
    test = learner.stream.experiences[0].test
    classes = learner.stream.seen(0)
    truth = test.labels

    seen_batches = []

    def oracle(images, label_space):
        # score 1 for the true class of each image, using the label-space positions
        n = len(images)
        start = sum(len(b) for b in seen_batches)
        seen_batches.append(images)
        y = truth[start : start + n]
        scores = torch.zeros(n, len(label_space))
        scores[torch.arange(n), torch.tensor([label_space.index(int(c)) for c in y])] = 1
        return scores

    assert learner.accuracy(oracle, test, classes) == 1.0

    def always_first(images, label_space):
        return torch.nn.functional.one_hot(torch.zeros(len(images), dtype=torch.long), len(label_space)).float()

    first = classes[0]
    assert learner.accuracy(always_first, test, classes) == pytest.approx((truth == first).float().mean().item())


def test_text_features_are_cached_until_the_text_tower_changes(learner):
    a = learner.class_features([0, 1])
    assert (0, "all") in learner._text_cache
    b = learner.class_features([1, 0])
    assert torch.equal(a[0], b[1])
    with torch.no_grad():
        learner.model.token_embedding.weight.add_(1.0)
    assert torch.equal(learner.class_features([0])[0], a[0])  # still cached: nobody said the tower changed
    learner.weights_changed()
    assert not torch.allclose(learner.class_features([0])[0], a[0])


def test_prompt_ensemble_is_the_normalised_mean_of_templates(learner):
    feats = learner.encode_texts(learner.dataset.prompts(2))
    expected = torch.nn.functional.normalize(feats.mean(0), dim=-1)
    assert torch.allclose(learner.class_features([2])[0], expected, atol=1e-5)
    single = learner.class_features([2], template=1)
    assert torch.allclose(single[0], feats[1], atol=1e-5)


def test_fit_updates_the_model_and_meters_the_images(learner):
    exp = learner.stream.experiences[0]
    before = [p.detach().clone() for p in learner.model.parameters()]

    def loss(batch):
        return learner.zero_shot_logits(batch.images, batch.exp.classes).logsumexp(1).mean()

    learner.fit(exp, loss)
    changed = any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))
    assert changed and learner.cost.train_images == len(exp.train)
    assert learner.last_train_loss is not None and learner._text_cache == {}


def test_cosine_schedule_with_warmup(learner):
    learner.cfg = TrainConfig(lr=1.0, warmup_steps=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = learner.make_schedule(opt, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[3] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))


def test_a_template_index_past_the_dataset_s_templates_is_one_line_naming_the_key(learner):
    from clbench.errors import UserError

    n = len(learner.dataset.templates)
    with pytest.raises(UserError, match=rf"template: {n} but dataset '.*' has {n} prompt templates; use 0..{n - 1}"):
        learner.class_features([0], template=n)
