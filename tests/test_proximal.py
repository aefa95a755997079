"""FedProx's proximal term on the client: its value and gradient by hand, and its pull in local training."""

import pytest
import torch

from fedvssl.federated.proximal import ProximalTerm


def test_value_and_gradient_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))  # "0.*" shared, "1.*" a local head
    term = ProximalTerm(model, ["0.weight", "0.bias"], mu=0.3)
    assert term().item() == 0.0  # at the global model
    with torch.no_grad():
        model[0].weight += torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
        model[0].bias -= torch.tensor([0.0, 3.0])
        model[1].weight += 100.0  # the head has no global value: no pull
    value = term()
    assert value.item() == pytest.approx(0.15 * (1 + 4 + 9))
    value.backward()
    torch.testing.assert_close(model[0].weight.grad, 0.3 * torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(model[0].bias.grad, 0.3 * torch.tensor([0.0, -3.0]))
    assert model[1].weight.grad is None


@pytest.mark.parametrize("mu", [-1.0, float("nan"), float("inf")])
def test_bad_mu_is_named(mu):
    with pytest.raises(ValueError, match="proximal-mu="):
        ProximalTerm(torch.nn.Linear(1, 1), ["weight"], mu)


@pytest.mark.slow  # 24 training steps of three pretext tasks
@pytest.mark.parametrize("name", ["ctp", "speed", "vcop"])
def test_local_training_stays_nearer_the_global_backbone_for_every_pretext_task(world, name):
    """Four local steps from the same start: with mu the backbone moves less; the head is not held; the
    reported loss is the pretext loss (the first step's, at the global model, is the same either way)."""
    from test_ssl import batch_of, method

    from fedvssl.federated.training import shared_keys, train_epoch

    m = method(name, "model=small", "ssl.optimizer.lr=0.05")
    batch = batch_of(world, m, 2)
    moved, losses = {}, {}
    for mu in (0.0, 20.0):
        torch.manual_seed(0)
        model = m.build_model(seed=0)
        keys = shared_keys(model, "backbone")
        start = {k: v.clone() for k, v in model.state_dict().items()}
        proximal = ProximalTerm(model, keys, mu) if mu else None
        losses[mu] = [train_epoch(model, m, [batch], proximal=proximal)["train-loss"] for _ in range(4)]
        params = dict(model.named_parameters())
        moved[mu] = {
            part: sum(float((p.detach() - start[k]).pow(2).sum()) for k, p in params.items() if (k in keys) == backbone)
            for part, backbone in (("backbone", True), ("head", False))
        }
    assert losses[20.0][0] == pytest.approx(losses[0.0][0], rel=1e-6)
    assert 0 < moved[20.0]["backbone"] < 0.7 * moved[0.0]["backbone"]
    assert moved[20.0]["head"] > 0
